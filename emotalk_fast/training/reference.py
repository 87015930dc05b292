"""The reference EmoTalk: the released model's own module tree and checkpoint keys, built from
Hugging Face `Wav2Vec2Model` and `nn.TransformerDecoder`, following the spec step by step.

It differs from the release only where the release wastes memory: no attention maps are
requested, and the periodic causal bias is built in closed form for the frames at hand (no
5000 x 5000 table, no length cap). It is the parity oracle for the fast model and the model
that training updates; its state dict is a release-layout `EmoTalk.pth`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from emotalk_fast.model import checkpoint as ckpt
from emotalk_fast.model.config import EmoTalkConfig, EncoderConfig
from emotalk_fast.model.emotalk import num_emotion_frames, num_frames, resample_frames

NORM_EPS = 1e-7


def hf_config(cfg: EncoderConfig):
    from transformers import Wav2Vec2Config

    conf = Wav2Vec2Config(**cfg.to_hf_dict())
    conf._attn_implementation = "sdpa"  # never materialise attention maps
    return conf


def normalize(wave: torch.Tensor) -> torch.Tensor:
    """The wav2vec2 processor's per-utterance normalisation (population variance)."""
    mean = wave.mean(-1, keepdim=True)
    var = wave.var(-1, unbiased=False, keepdim=True)
    return (wave - mean) / torch.sqrt(var + NORM_EPS)


def periodic_causal_mask(num_heads: int, slopes: list[float], period: int, T: int, device) -> torch.Tensor:
    """[H, T, T]: -slope_h * floor((i - j) / period) for j <= i, -inf above the diagonal."""
    i = torch.arange(T, device=device)
    dist = i[:, None] - i[None, :]
    bias = -torch.tensor(slopes, device=device)[:, None, None] * torch.div(dist, period, rounding_mode="floor")
    return bias.masked_fill(dist < 0, float("-inf"))


def diagonal_memory_mask(T: int, device) -> torch.Tensor:
    """Bool [T, T], True = blocked: frame i sees memory frame i only."""
    return ~torch.eye(T, dtype=torch.bool, device=device)


def _wav2vec2_class():
    from transformers import Wav2Vec2Model

    class ReleaseWav2Vec2(Wav2Vec2Model):
        """The release's wav2vec2 with its (unused) CTC head, keys `lm_head.*`."""

        def __init__(self, config):
            super().__init__(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size - 1)

        def encode(self, wave: torch.Tensor, frames: int | None) -> torch.Tensor:
            """Normalised wave [B, N] -> hidden [B, T, hidden]; T = frames, or the emotion
            encoder's own int(L / 50 * 30) when frames is None."""
            feats = self.feature_extractor(wave).transpose(1, 2)
            feats = resample_frames(feats, frames if frames is not None else num_emotion_frames(feats.shape[1]))
            hidden, _ = self.feature_projection(feats)
            return self.encoder(hidden)[0]

    return ReleaseWav2Vec2


class ClassificationHead(nn.Module):
    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(0.0)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, x):
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class EmotionEncoder(nn.Module):
    """The release's Wav2Vec2ForSpeechClassification: wav2vec2 + mean-pooled classifier."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.wav2vec2 = _wav2vec2_class()(hf_config(cfg))
        self.classifier = ClassificationHead(cfg.hidden_size, cfg.num_labels)

    def forward(self, wave: torch.Tensor, frames: int):
        """-> (emotion hidden resampled to `frames` [B, frames, hidden], logits [B, labels])."""
        hidden = resample_frames(self.wav2vec2.encode(wave, None), frames)
        return hidden, self.classifier(hidden.mean(1))


class EmoTalkReference(nn.Module):
    def __init__(self, cfg: EmoTalkConfig):
        super().__init__()
        self.cfg = cfg
        dec, D = cfg.decoder, cfg.decoder.feature_dim
        self.audio_encoder_cont = _wav2vec2_class()(hf_config(cfg.content))
        self.audio_encoder_emo = EmotionEncoder(cfg.emotion)
        self.audio_feature_map_cont = nn.Linear(cfg.content.hidden_size, dec.content_dim)
        self.audio_feature_map_emo = nn.Linear(cfg.emotion.hidden_size, D)
        self.audio_feature_map_emo2 = nn.Linear(D, dec.emotion_dim)
        self.relu = nn.ReLU()
        self.obj_vector_level = nn.Linear(dec.num_levels, dec.style_dim)
        self.obj_vector_person = nn.Linear(dec.num_persons, dec.style_dim)
        layer = nn.TransformerDecoderLayer(d_model=D, nhead=dec.num_heads, dim_feedforward=dec.ff_dim,
                                           batch_first=True, layer_norm_eps=dec.layer_norm_eps)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers=1)
        self.bs_map_r = nn.Linear(D, dec.num_blendshapes)

    def periodic_positional_encoding(self, T: int, device) -> torch.Tensor:
        """FaceFormer's PPE rows for frames 0..T-1 (the paper's option; the release omits it)."""
        import math

        D, period = self.cfg.decoder.feature_dim, self.cfg.decoder.period
        pos = torch.arange(period, dtype=torch.float32, device=device)[:, None]
        div = torch.exp(torch.arange(0, D, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / D))
        pe = torch.zeros(period, D, device=device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return pe.repeat(T // period + 1, 1)[:T]

    def decode(self, content_hidden, emotion_hidden, level, person):
        """Hidden [B, T, hidden] x 2 and one-hot (or weighted) level [B, 2], person [B, 24]
        -> blendshapes [B, T, 52], decoder_out [B, T, D]."""
        B, T, _ = content_hidden.shape
        dec = self.cfg.decoder
        e832 = self.audio_feature_map_emo(emotion_hidden)
        e256 = self.relu(self.audio_feature_map_emo2(e832))
        lvl = self.obj_vector_level(level)[:, None, :].repeat(1, T, 1)
        per = self.obj_vector_person(person)[:, None, :].repeat(1, T, 1)
        x = torch.cat([self.audio_feature_map_cont(content_hidden), e256, lvl, per], dim=2)
        if dec.ppe:
            x = x + self.periodic_positional_encoding(T, x.device)
        tgt_mask = periodic_causal_mask(dec.num_heads, dec.alibi_slopes(), dec.period, T, x.device)
        tgt_mask = tgt_mask.repeat(B, 1, 1).to(x.dtype)  # [B * H, T, T], batch-major as MHA expects
        out = self.transformer_decoder(x, e832, tgt_mask=tgt_mask, memory_mask=diagonal_memory_mask(T, x.device))
        return self.bs_map_r(out), out

    def _one_hot(self, level, person, batch: int, device):
        dec = self.cfg.decoder
        level = torch.as_tensor(level, device=device).reshape(-1).expand(batch)
        person = torch.as_tensor(person, device=device).reshape(-1).expand(batch)
        return (F.one_hot(level, dec.num_levels).float(), F.one_hot(person, dec.num_persons).float())

    def predict(self, audio: torch.Tensor, level=1, person=0) -> dict[str, torch.Tensor]:
        """Release inference on equal-length raw 16 kHz audio [B, N]: every intermediate."""
        T = num_frames(audio.shape[-1])
        wave = normalize(audio)
        content = self.audio_encoder_cont.encode(wave, T)
        emotion, logits = self.audio_encoder_emo(wave, T)
        lvl, per = self._one_hot(level, person, audio.shape[0], audio.device)
        bs, out = self.decode(content, emotion, lvl, per)
        return {"content_hidden": content, "emotion_hidden": emotion, "emotion_logits": logits,
                "decoder_out": out, "blendshapes": bs}

    def forward(self, input12, input21, frames11: int, frames12: int, level, person):
        """The released training forward on a pseudo pair (raw 16 kHz audio [B, N]).

        input12 carries content c1 with emotion e2; input21 content c2 with emotion e1.
        Returns (bs_output11: cross reconstruction at frames11, bs_output12: self reconstruction
        at frames12, label1: emotion logits of input21 pooled at frames11).
        """
        w12, w21 = normalize(input12), normalize(input21)
        lvl, per = self._one_hot(level, person, input12.shape[0], input12.device)
        emo11, label1 = self.audio_encoder_emo(w21, frames11)
        out11, _ = self.decode(self.audio_encoder_cont.encode(w12, frames11), emo11, lvl, per)
        emo12, _ = self.audio_encoder_emo(w12, frames12)
        out12, _ = self.decode(self.audio_encoder_cont.encode(w12, frames12), emo12, lvl, per)
        return out11, out12, label1


def load_release_weights(model: EmoTalkReference, state_dict: dict[str, torch.Tensor], assign: bool = False) -> None:
    """Load a release-layout state dict strictly, accepting either weight-norm naming. assign:
    the model takes the tensors themselves instead of copying them (for a model built on the
    meta device: no second copy of the weights in memory)."""
    parametrized = any(".parametrizations.weight." in k for k in model.state_dict())
    model.load_state_dict(ckpt.rename_weight_norm(state_dict, parametrized), strict=True, assign=assign)
