"""What the released model computes, and loading it: config, checkpoint, encoders, decoder,
style controls, post-processing and the decoder's ops. Knows nothing of streams, files or protocols."""
