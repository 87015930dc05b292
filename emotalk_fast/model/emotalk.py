"""EmoTalk: speech -> 52 ARKit blendshapes at 30 fps, with disentangled content and emotion.

    wave -> normalise -> Ec front end -> resample L->T -> Ec transformer -> content_hidden
         -> normalise -> Ee front end -> resample L->T_e -> Ee transformer -> resample T_e->T
                                                                            -> emotion_hidden
    x = concat[content_map(content), relu(emotion_map2(e832)), level, person],
        e832 = emotion_map(emotion_hidden)
    blendshapes = head(Decoder(x, memory=e832))
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ENCODER_FPS, FPS, SAMPLE_RATE, EmoTalkConfig
from .decoder import PeriodicCausalDecoder
from .encoder import Wav2Vec2Encoder

NORM_EPS = 1e-7  # the wav2vec2 feature extractor's normalisation epsilon


def num_frames(num_samples: int) -> int:
    """Output frames for `num_samples` of 16 kHz audio: ceil(N / 16000 * 30), float as released."""
    return int(math.ceil(num_samples / SAMPLE_RATE * FPS))


def _ints(num_samples) -> list[int]:
    """Sample counts as Python ints, from a tensor or a list."""
    return [int(n) for n in (num_samples.tolist() if isinstance(num_samples, torch.Tensor) else num_samples)]


def num_emotion_frames(num_cnn_frames: int) -> int:
    """The emotion encoder's own frame count: int(L / 50 * 30), float then truncation."""
    return int(num_cnn_frames / float(ENCODER_FPS) * FPS)


def resample_frames(x: torch.Tensor, length: int) -> torch.Tensor:
    """[B, L, C] -> [B, length, C] by linear interpolation with align_corners=True."""
    return F.interpolate(x.transpose(1, 2), size=length, mode="linear", align_corners=True).transpose(1, 2)


def normalize_waveform(wave: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
    """Zero-mean unit-variance per utterance over its valid samples; padding stays zero."""
    valid = (torch.arange(wave.shape[1], device=wave.device)[None, :] < num_samples[:, None]).to(wave.dtype)
    n = num_samples.to(wave.dtype)[:, None]
    mean = (wave * valid).sum(1, keepdim=True) / n
    var = (((wave - mean) * valid) ** 2).sum(1, keepdim=True) / n
    return (wave - mean) / torch.sqrt(var + NORM_EPS) * valid


@dataclass
class EmoTalkOutput:
    blendshapes: torch.Tensor  # [B, T, 52]
    decoder_out: torch.Tensor  # [B, T, feature_dim]
    content_hidden: torch.Tensor  # [B, T, hidden]
    emotion_hidden: torch.Tensor  # [B, T, hidden]
    emotion_logits: torch.Tensor  # [B, labels]
    frames: list[int]  # valid frames per item


class EmoTalk(nn.Module):
    def __init__(self, cfg: EmoTalkConfig):
        super().__init__()
        self.cfg = cfg
        dec = cfg.decoder
        self.content_encoder = Wav2Vec2Encoder(cfg.content)
        self.emotion_encoder = Wav2Vec2Encoder(cfg.emotion)
        self.content_map = nn.Linear(cfg.content.hidden_size, dec.content_dim)
        self.emotion_map = nn.Linear(cfg.emotion.hidden_size, dec.feature_dim)
        self.emotion_map2 = nn.Linear(dec.feature_dim, dec.emotion_dim)
        self.level_embed = nn.Linear(dec.num_levels, dec.style_dim)
        self.person_embed = nn.Linear(dec.num_persons, dec.style_dim)
        self.decoder = PeriodicCausalDecoder(dec)
        self.blendshape_head = nn.Linear(dec.feature_dim, dec.num_blendshapes)

    # --- the two encoders -------------------------------------------------------------
    def prepare_wave(self, wave: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        """Raw wave [B, N] -> normalised over each item's valid samples, in the encoders' dtype.
        The statistics are taken in float32 whatever the weights' dtype."""
        return normalize_waveform(wave.float(), num_samples).to(self.content_map.weight.dtype)

    def front_ends(self, wave: torch.Tensor, content: bool = True, emotion: bool = True):
        """Normalised wave [B, N] -> (content CNN features, emotion CNN features) [B, L, C] for
        the encoders asked for (None for the other): one run when both share a front end."""
        shared = self.content_encoder.front_end(wave) if self.shares_front_end and content and emotion else None
        c = shared if shared is not None else self.content_encoder.front_end(wave) if content else None
        e = shared if shared is not None else self.emotion_encoder.front_end(wave) if emotion else None
        return c, e

    def encode_content(self, wave: torch.Tensor, num_samples: torch.Tensor, frames: list[int],
                       feats: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised wave [B, N] -> content_hidden [B, max(frames), hidden].
        `feats`: this encoder's CNN features of `wave` when already computed."""
        enc = self.content_encoder
        feats = enc.front_end(wave) if feats is None else feats
        cnn_lens = [enc.cfg.num_cnn_frames(n) for n in _ints(num_samples)]
        feats = self._resample_ragged(feats, cnn_lens, frames)
        return enc.transformer(feats, self._lengths(frames, wave.device))

    def encode_emotion(self, wave: torch.Tensor, num_samples: torch.Tensor, frames: list[int],
                       feats: torch.Tensor | None = None):
        """Normalised wave [B, N] -> (emotion_hidden [B, max(frames), hidden], logits [B, labels])."""
        enc = self.emotion_encoder
        feats = enc.front_end(wave) if feats is None else feats
        cnn_lens = [enc.cfg.num_cnn_frames(n) for n in _ints(num_samples)]
        emo_frames = [num_emotion_frames(n) for n in cnn_lens]
        feats = self._resample_ragged(feats, cnn_lens, emo_frames)
        hidden = enc.transformer(feats, self._lengths(emo_frames, wave.device))
        hidden = self._resample_ragged(hidden, emo_frames, frames)
        return hidden, enc.classify(self._mean_over_frames(hidden, frames))

    # --- decoder ------------------------------------------------------------------------
    def decoder_inputs(self, content_hidden, emotion_hidden, level_weights, person_weights):
        """Hidden states [B, T, hidden] x 2 and style weights ([B, n] for the whole clip, or
        [B, T, n] per frame) -> (x, memory).

        x = concat[content, relu(emotion_map2(e832)), level, person]; memory = e832. The style
        weights are one-hot rows in the release; any weights go through the same linear maps.
        """
        T = content_hidden.shape[1]
        e832 = self.emotion_map(emotion_hidden)
        style = torch.cat([self.level_embed(level_weights), self.person_embed(person_weights)], -1)
        if style.dim() == 2:
            style = style[:, None, :].expand(-1, T, -1)
        x = torch.cat([self.content_map(content_hidden), F.relu(self.emotion_map2(e832)), style], dim=-1)
        return x, e832

    def decode(self, content_hidden, emotion_hidden, level_weights, person_weights):
        """The whole sequence at once -> (blendshapes [B, T, 52], decoder_out [B, T, D])."""
        x, memory = self.decoder_inputs(content_hidden, emotion_hidden, level_weights, person_weights)
        out = self.decoder(x, memory)
        return self.blendshape_head(out), out

    def forward(self, wave: torch.Tensor, num_samples: torch.Tensor, level: torch.Tensor, person: torch.Tensor,
                frames: list[int] | None = None, emotion_wave: torch.Tensor | None = None,
                emotion_num_samples: torch.Tensor | None = None) -> EmoTalkOutput:
        """wave [B, N] (16 kHz, zero-padded past num_samples [B]: a tensor, or a list of ints,
        which keeps every size a constant when the model is traced for export).

        level, person: indices [B] (the release's one-hot inputs) or weights [B, n] or [B, T, n].
        frames: output frames per item (default ceil(N / 16000 * 30)).
        emotion_wave: take the emotion from this audio instead (the training forward's cross
            reconstruction); its features are resampled to the content's frames.
        """
        if frames is None:
            frames = [num_frames(n) for n in _ints(num_samples)]
        lengths = num_samples if isinstance(num_samples, torch.Tensor) else torch.tensor(num_samples, device=wave.device)
        wave = self.prepare_wave(wave, lengths)
        content_feats, emotion_feats = self.front_ends(wave, emotion=emotion_wave is None)
        content = self.encode_content(wave, num_samples, frames, content_feats)
        if emotion_wave is None:
            emotion, logits = self.encode_emotion(wave, num_samples, frames, emotion_feats)
        else:
            emotion_wave = self.prepare_wave(emotion_wave, emotion_num_samples)
            emotion, logits = self.encode_emotion(emotion_wave, emotion_num_samples, frames)
        dec = self.cfg.decoder
        blendshapes, out = self.decode(content, emotion, self._weights(level, dec.num_levels, wave),
                                       self._weights(person, dec.num_persons, wave))
        return EmoTalkOutput(blendshapes, out, content, emotion, logits, frames)

    @staticmethod
    def _weights(x: torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
        """Indices -> one-hot rows (exactly the release's input); weights pass through."""
        if x.is_floating_point():
            return x.to(device=like.device, dtype=like.dtype)
        return F.one_hot(x.to(like.device), size).to(like.dtype)

    # --- one CNN front end for both encoders, when their weights say so -------------------
    @property
    def shares_front_end(self) -> bool:
        return self.content_encoder.front_end is self.emotion_encoder.front_end

    def share_identical_front_ends(self) -> bool:
        """Make both encoders use one CNN front end (computed once per clip) if their front-end
        tensors are equal, as in a checkpoint fine-tuned from a single wav2vec2. Never assumed:
        the release's two encoders come from different pretrained models."""
        a = self.content_encoder.front_end.state_dict()
        b = self.emotion_encoder.front_end.state_dict()
        if a.keys() != b.keys() or not all(
                a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a):
            return False
        self.emotion_encoder.front_end = self.content_encoder.front_end
        return True

    # --- ragged-batch helpers -------------------------------------------------------------
    @staticmethod
    def _lengths(frames: list[int], device) -> torch.Tensor | None:
        """None when no item is padded, so the common single-clip case needs no mask."""
        if len(set(frames)) == 1:
            return None
        return torch.tensor(frames, device=device)

    @staticmethod
    def _resample_ragged(x: torch.Tensor, lengths: list[int], targets: list[int]) -> torch.Tensor:
        """Resample each item's valid prefix to its own target length; zero-pad to max(targets)."""
        if len(set(lengths)) == 1 and len(set(targets)) == 1:
            return resample_frames(x[:, : lengths[0]], targets[0])
        out = x.new_zeros(x.shape[0], max(targets), x.shape[2])
        for b, (n, t) in enumerate(zip(lengths, targets)):
            out[b, :t] = resample_frames(x[b : b + 1, :n], t)[0]
        return out

    @staticmethod
    def _mean_over_frames(h: torch.Tensor, frames: list[int]) -> torch.Tensor:
        if len(set(frames)) == 1:
            return h.mean(1)
        return torch.stack([h[b, :t].mean(0) for b, t in enumerate(frames)])
