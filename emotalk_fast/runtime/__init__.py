"""How and where the model runs: device, dtype, threads and decoder backend; the int8 linear layer."""
