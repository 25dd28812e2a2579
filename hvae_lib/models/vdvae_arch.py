"""The Very Deep VAE's architecture strings, parsed into typed lists (Chapter 6, "the architecture string").

openai/vdvae describes a network by two comma-separated strings of tokens, e.g. for CIFAR-10

    encoder  "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3"
    decoder  "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21"

- ``RxN``: N residual blocks at resolution R (``R`` alone is one block);
- ``RdK`` (encoder only): one block at resolution R whose output is average-pooled by K, to R / K;
- ``RmS`` (decoder only): one top-down block at resolution R whose state starts from the state at
  the lower resolution S, unpooled by R / S ("mix in").

The encoder runs left to right from the image resolution down; the decoder from the top (lowest
resolution) up to the image, one latent layer per top-down block. The official parser accepts
anything and fails later, deep inside the model, or silently builds something else (a typo such
as ``32d2`` in the decoder becomes a "mix in from resolution 2"). Here every token is checked where
it stands, and a bad one is a one-sentence :class:`ValueError` that names it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"^(\d+)(?:([xdm])(\d+))?$")


@dataclass(frozen=True)
class EncoderBlockSpec:
    """One bottom-up residual block: at ``resolution``, pooled by ``down_rate`` after it (None: not pooled)."""

    resolution: int
    down_rate: int | None = None

    @property
    def out_resolution(self) -> int:
        return self.resolution // self.down_rate if self.down_rate else self.resolution


@dataclass(frozen=True)
class DecoderBlockSpec:
    """One top-down block (one latent layer) at ``resolution``; ``mixin``: the lower resolution whose
    state is unpooled into this block's state first (None: the state continues at this resolution)."""

    resolution: int
    mixin: int | None = None


def _tokens(text: str, role: str):
    """(token, resolution, op, number) for each comma-separated token, or a ValueError naming the bad one."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"The {role} architecture string is empty; write tokens like '32x3,32d2' (encoder) "
                         f"or '1x1,4m1,4x2' (decoder).")
    for token in text.split(","):
        token = token.strip()
        match = _TOKEN.match(token)
        if match is None:
            ops = "'RxN', 'RdK' or 'R'" if role == "encoder" else "'RxN', 'RmS' or 'R'"
            raise ValueError(f"Bad token {token!r} in the {role} string {text!r}: expected {ops} with R, N, "
                             f"K, S positive integers.")
        res, op, num = int(match.group(1)), match.group(2), int(match.group(3)) if match.group(3) else None
        if res < 1 or (num is not None and num < 1):
            raise ValueError(f"Bad token {token!r} in the {role} string {text!r}: resolutions and counts must be "
                             f"at least 1.")
        yield token, res, op, num


def parse_encoder(text: str, image_resolution: int) -> list[EncoderBlockSpec]:
    """The encoder string as one :class:`EncoderBlockSpec` per block, checked against the image size:
    each token must sit at the resolution the blocks before it reached, and a pooling factor must
    divide it."""
    blocks: list[EncoderBlockSpec] = []
    current = image_resolution
    for token, res, op, num in _tokens(text, "encoder"):
        if op == "m":
            raise ValueError(f"Bad token {token!r} in the encoder string {text!r}: 'm' (mix in) belongs to the "
                             f"decoder; the encoder downsamples with 'RdK'.")
        if res != current:
            raise ValueError(f"Bad token {token!r} in the encoder string {text!r}: the blocks before it leave the "
                             f"encoder at resolution {current}, so this token must start with {current}.")
        if op == "d":
            if num < 2 or res % num:
                raise ValueError(f"Bad token {token!r} in the encoder string {text!r}: the pooling factor must be "
                                 f"at least 2 and divide the resolution {res}.")
            blocks.append(EncoderBlockSpec(res, num))
            current = res // num
        else:
            blocks += [EncoderBlockSpec(res) for _ in range(num if op == "x" else 1)]
    return blocks


def parse_decoder(text: str, image_resolution: int) -> list[DecoderBlockSpec]:
    """The decoder string as one :class:`DecoderBlockSpec` per top-down block (latent layer), top first:
    a mix-in must come from a lower resolution already in the decoder that divides this one, and the
    last token must be at the image resolution (the decoder's output)."""
    blocks: list[DecoderBlockSpec] = []
    seen: set[int] = set()
    token = ""
    for token, res, op, num in _tokens(text, "decoder"):
        if op == "d":
            raise ValueError(f"Bad token {token!r} in the decoder string {text!r}: 'd' (downsample) belongs to the "
                             f"encoder; the decoder goes up with 'RmS' (resolution R mixing in S).")
        if res > image_resolution:
            raise ValueError(f"Bad token {token!r} in the decoder string {text!r}: resolution {res} is above the "
                             f"image's {image_resolution}.")
        if op == "m":
            if num not in seen or num >= res or res % num:
                raise ValueError(f"Bad token {token!r} in the decoder string {text!r}: it mixes in resolution {num}, "
                                 f"which must be lower than {res}, divide it, and appear earlier in the string.")
            blocks.append(DecoderBlockSpec(res, num))
        else:
            blocks += [DecoderBlockSpec(res) for _ in range(num if op == "x" else 1)]
        seen.add(res)
    if blocks[-1].resolution != image_resolution:
        raise ValueError(f"Bad token {token!r} at the end of the decoder string {text!r}: the decoder must end at "
                         f"the image resolution {image_resolution}, which is its output.")
    return blocks


def parse_widths(text: str, width: int) -> dict[int, int]:
    """``custom_width_str`` ("512:32,256:64", resolution:width) as a lookup; other resolutions get ``width``."""
    widths: dict[int, int] = {}
    for token in (t.strip() for t in text.split(",") if t.strip()) if text else ():
        match = re.match(r"^(\d+):(\d+)$", token)
        if match is None or int(match.group(2)) < 1:
            raise ValueError(f"Bad token {token!r} in custom_width_str {text!r}: expected 'R:W' (width W at "
                             f"resolution R), e.g. '512:32,256:64'.")
        widths[int(match.group(1))] = int(match.group(2))
    return _Widths(widths, width)


class _Widths(dict):
    """A resolution -> channels map whose missing resolutions have the default width (as the official
    ``defaultdict(lambda: width)``, but without inserting them)."""

    def __init__(self, explicit: dict[int, int], default: int):
        super().__init__(explicit)
        self.default = default

    def __missing__(self, resolution: int) -> int:
        return self.default


def check_pair(encoder: list[EncoderBlockSpec], decoder: list[DecoderBlockSpec], enc_text: str, dec_text: str) -> None:
    """Every decoder resolution must be one the encoder leaves an activation at (the posterior reads it)."""
    available = {encoder[0].resolution} | {b.out_resolution for b in encoder}
    for res in dict.fromkeys(b.resolution for b in decoder):
        if res not in available:
            raise ValueError(f"The decoder string {dec_text!r} has blocks at resolution {res}, but the encoder "
                             f"string {enc_text!r} never reaches it (it visits {sorted(available, reverse=True)}); "
                             f"the posterior of those blocks reads the encoder there.")
