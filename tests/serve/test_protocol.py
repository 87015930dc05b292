"""The protocol layer: its message classes come from the committed descriptor set, which matches
the .proto files; importing the service runs no code generator; header parsing and the A2F
parameter mapping without a server."""
import importlib.resources
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from emotalk_fast.serve import protocol as pb


def test_committed_descriptor_set_is_current():
    """protoc over protos/*.proto now gives the descriptors committed in protos/a2f.desc."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    files = sorted(p.name for p in pb.PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a2f.desc"
        assert protoc.main(["protoc", f"-I{pb.PROTO_DIR}", f"-I{well_known}", "--include_imports",
                            f"--descriptor_set_out={out}", *files]) == 0
        fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(pb.DESCRIPTOR_SET.read_bytes())
    ours = lambda fds: {f.name: f for f in fds.file if f.name.startswith("nvidia_ace.")}  # noqa: E731
    assert ours(committed) == ours(fresh), "protos/*.proto changed: recompile protos/a2f.desc (see protocol.py)"
    assert set(ours(committed)) == set(files)


def test_the_service_needs_no_protoc():
    """With grpcio-tools blocked (as `pip install .[serve]` leaves it: absent), the server, the
    client and every message class load."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'grpc_tools':\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import emotalk_fast.serve.server, emotalk_fast.client, emotalk_fast.serve.protocol as pb\n"
            "assert all(getattr(pb, name) for name in pb._MESSAGES)\n"
            "assert not [m for m in sys.modules if m.startswith('grpc_tools')]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _header(**blendshapes):
    header = pb.AudioStreamHeader(audio_header=pb.AudioHeader(
        audio_format=pb.AudioHeader.AUDIO_FORMAT_PCM, channel_count=1, samples_per_second=44100, bits_per_sample=16))
    for name, value in blendshapes.items():
        header.blendshape_params.bs_weight_multipliers[name] = value
    return header


def test_header_parsing_and_face_parameters():
    style = pb.parse_header(_header(JawOpen=2.0, HeadRoll=5.0), num_persons=24)  # HeadRoll: not ours, ignored
    assert style.sample_rate == 44100 and style.level == 1.0 and style.person == 0
    frames = np.full((3, 52), 0.4, np.float32)
    values = style.apply(frames)
    jaw = pb.A2F_BLENDSHAPE_NAMES.index("JawOpen")
    assert values[0, jaw] == pytest.approx(0.8) and np.allclose(np.delete(values, jaw, 1), 0.4)
    bad = _header()
    bad.audio_header.channel_count = 2
    with pytest.raises(pb.StreamError, match="only mono"):
        pb.parse_header(bad, num_persons=24)
    with pytest.raises(pb.StreamError, match="is nan"):
        pb.parse_header(_header(JawOpen=float("nan")), num_persons=24)


def test_reply_messages():
    reply = pb.animation_reply(30, np.zeros((2, 52)), b"\x00\x01", 1.0, [], {"joy": 0.5})
    frames = reply.animation_data.skel_animation.blend_shape_weights
    assert [f.time_code for f in frames] == [1.0, 31 / 30]
    aggregate = pb.unpack_any(reply.animation_data.metadata[pb.EMOTION_AGGREGATE_KEY], pb.EmotionAggregate)
    assert aggregate.a2f_smoothed_output[0].emotion["joy"] == 0.5
    event, status = pb.end_replies()
    assert event.event.event_type == pb.END_OF_A2F_AUDIO_PROCESSING and status.status.code == pb.Status.SUCCESS
    assert pb.error_reply("why").status.message == "why"
