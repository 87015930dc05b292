"""One side of `vs_release.py`, in its own process: the released EmoTalk code or emotalk_fast.

    python vs_release_worker.py release CHECKPOINT.pth SPEECH.wav   (the release's venv; needs
        EMOTALK_RELEASE_DIR: a folder holding the release's model.py, wav2vec.py and utils.py)
    python vs_release_worker.py fast-float32|fast-bfloat16 CHECKPOINT SPEECH.wav
    python vs_release_worker.py gemm                                   (GEMM rates at the encoder's shapes)

It loads the model as its users would (from the checkpoint on disk), animates 1 s, reports its
start-up (process start -> first frame, imports included), then answers JSON commands on stdin,
one per line: {"cmd": "threads", "n": 2}, {"cmd": "run"} -> seconds, {"cmd": "save", "path": ...},
{"cmd": "rss"} -> its own peak resident set, {"cmd": "quit"}. Nothing of the release is copied
here: its modules are imported from the folder the user names, and only the Hugging Face hub
downloads in its constructor are replaced by configs of the released sizes.
"""
import time

T_START = time.perf_counter()  # start-up counts the imports too

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# the released encoders' configuration (wav2vec2-large-xlsr-53 and the emotion model built on it)
ENCODER = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
               conv_dim=[512] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
               conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
               num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, vocab_size=33,
               hidden_act="gelu", layer_norm_eps=1e-5)
EMOTION_EXTRA = dict(num_labels=7, pooling_mode="mean", final_dropout=0.0)


def read_wav(path):
    import soundfile

    x, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000 and x.ndim == 1, (path, rate, x.shape)
    return x


def release_side(checkpoint, speech):
    """The released EmoTalk, as its demo runs it: construct, load the .pth (strict=False, as the
    release does), predict under no_grad."""
    sys.path.insert(0, os.environ["EMOTALK_RELEASE_DIR"])
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    import model as release_model  # the release's own files
    import wav2vec as release_wav2vec

    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    release_model.Wav2Vec2Model = types.SimpleNamespace(
        from_pretrained=lambda *_: release_wav2vec.Wav2Vec2Model(Wav2Vec2Config(**ENCODER)))
    release_model.Wav2Vec2ForSpeechClassification = types.SimpleNamespace(
        from_pretrained=lambda *_: release_wav2vec.Wav2Vec2ForSpeechClassification(
            Wav2Vec2Config(**ENCODER, **EMOTION_EXTRA)))
    release_model.Wav2Vec2Processor = types.SimpleNamespace(from_pretrained=lambda *_: extractor)
    release_model.Wav2Vec2FeatureExtractor = types.SimpleNamespace(from_pretrained=lambda *_: extractor)
    args = types.SimpleNamespace(feature_dim=832, bs_dim=52, device="cpu", batch_size=1, max_seq_len=5000, period=30)
    model = release_model.EmoTalk(args)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"), strict=False)
    model.eval()
    level, person = torch.tensor([1]), torch.tensor([0])

    def run(audio):
        with torch.no_grad():
            return model.predict(torch.from_numpy(audio).unsqueeze(0), level, person)[0].numpy()

    return run


def fast_side(checkpoint, dtype):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from emotalk_fast import Animator

    animator = Animator.from_pretrained(checkpoint, device="cpu", dtype=dtype)
    return lambda audio: animator.animate(audio).blendshapes


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) / 1024


def gemm_rates(threads_list, frames=1070):
    """GFLOP/s of the encoder's GEMMs ([frames, 1024] x [1024, 4096] and back, and the QKV/O
    [frames, 1024] x [1024, 1024]) in float32 and bfloat16, per thread count."""
    shapes = ((frames, 1024, 4096), (frames, 4096, 1024), (frames, 1024, 1024))
    out = {}
    for threads in threads_list:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            flops = seconds = 0.0
            for m, k, n in shapes:
                a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
                for _ in range(3):
                    a @ b
                t0 = time.perf_counter()
                for _ in range(10):
                    a @ b
                seconds += time.perf_counter() - t0
                flops += 10 * 2 * m * k * n
            out[f"{str(dtype).replace('torch.', '')}@{threads}"] = flops / seconds / 1e9
    return out


def main():
    role = sys.argv[1]
    if role == "gemm":
        print(json.dumps(gemm_rates([int(x) for x in sys.argv[2].split(",")])), flush=True)
        return
    checkpoint, speech_path = sys.argv[2], sys.argv[3]
    run = release_side(checkpoint, speech_path) if role == "release" else fast_side(checkpoint, role.split("-")[1])
    speech = read_wav(speech_path)
    run(speech[:16000])
    print(json.dumps({"startup_s": time.perf_counter() - T_START}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "threads":
            torch.set_num_threads(cmd["n"])
            reply = {"threads": torch.get_num_threads()}
        elif cmd["cmd"] == "run":
            t0 = time.perf_counter()
            frames = run(speech)
            reply = {"seconds": time.perf_counter() - t0, "frames": int(frames.shape[0])}
        elif cmd["cmd"] == "save":
            np.save(cmd["path"], np.asarray(run(speech), np.float32))
            reply = {"saved": cmd["path"]}
        elif cmd["cmd"] == "rss":
            reply = {"peak_rss_mb": peak_rss_mb()}
        else:
            return
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
