"""The model: V-JEPA2 video classification, its presets, its video processor, and every LoRA choice.

- ``ModelConfig.preset`` unset: ``VJEPA2ForVideoClassification.from_pretrained(path)``, where ``path`` is the
  local folder the sweep's preparation fetched and verified (lorasweep_trainer.weights.locate), or without one
  ``model.source`` at ``model.revision`` as written (a hub name or a volume path; the HF cache and
  ``HF_HUB_OFFLINE`` work as usual). The classifier is re-initialised for our classes.
- ``preset="tiny"``: a ~170k-parameter V-JEPA2 for CPU tests (32 px crop, 2 encoder layers).
- ``preset="vjepa2-vitl-256"``: the ViT-L shape of ``facebook/vjepa2-vitl-fpc16-256-ssv2`` with random weights,
  for parameter accounting and benchmarks without a download.

Preset weights are drawn from a generator seeded by the trial seed, so "a fresh base built the same way" is
bit-identical, which is what lets a saved adapter be reloaded and reproduce predictions. A preset's adapter names
its base ``preset:<name>`` at revision ``seed-<trial seed>`` (`base_reference`); `model_config_for` turns an
adapter's recorded base back into the ModelConfig that builds it, and `base_digest` checks that it did.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, Literal, cast

import torch
from huggingface_hub.errors import HFValidationError
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2VideoProcessor

from lorasweep_trainer import config as contract
from lorasweep_trainer.cache import encoder_digest, tensors_digest
from lorasweep_trainer.config import PRESET_PREFIX, ConfigError, LoraConfig, ModelConfig, ModelWeights
from lorasweep_trainer.evaluate import autocast
from lorasweep_trainer.results import PRESET_REVISION_PREFIX, AdapterBase
from lorasweep_trainer.weights import HOW_TO_PROVIDE_WEIGHTS, ModelUnavailable

__all__ = ["HOW_TO_PROVIDE_WEIGHTS", "ModelUnavailable"]  # defined with the fetching, raised here too

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        # A random encoder with the usual 0.02 init maps every clip to nearly the same features; at 0.2 its
        # random features keep enough of the input that LoRA and the classifier can learn the synthetic motions.
        "initializer_range": 0.2,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "mlp_ratio": 2.0,
        "num_pooler_layers": 1,
        "patch_size": 8,
        "tubelet_size": 2,
        "crop_size": 32,
        "image_size": 32,
        "pred_hidden_size": 16,
        "pred_num_hidden_layers": 1,
        "pred_num_attention_heads": 2,
        "pred_num_mask_tokens": 2,
    },
    "vjepa2-vitl-256": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "mlp_ratio": 4.0,
        "num_pooler_layers": 3,
        "patch_size": 16,
        "tubelet_size": 2,
        "crop_size": 256,
        "image_size": 256,
    },
}

# All LoRA choices live here. The classifier is new for our classes, so it is trained in full
# (modules_to_save); the encoder and pooler weights stay frozen. With the default target modules only the
# attentive pooler is adapted: V-JEPA2's encoder names its projections query/key/value/proj.
LORA_MODULES_TO_SAVE = ["classifier"]
LORA_BIAS: Literal["none"] = "none"


@contextlib.contextmanager
def _loading(source: str) -> Iterator[None]:
    try:
        yield
    except (OSError, HFValidationError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelUnavailable(
            f"model.source {source!r} cannot be loaded ({first_line}); {HOW_TO_PROVIDE_WEIGHTS}"
        ) from error


def lora_config(lora: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; alpha / rank is a float ratio
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=list(LORA_MODULES_TO_SAVE),
        bias=LORA_BIAS,
    )


def apply_lora(model: VJEPA2ForVideoClassification, lora: LoraConfig) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; a target module the model lacks is a ConfigError (exit 2)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    absent = [name for name in lora.target_modules if name not in present]
    if absent:
        raise ConfigError(
            f"training.lora.targetModules {absent} are not modules of this model; "
            "V-JEPA2 has q_proj, k_proj, v_proj, out_proj (pooler) and query, key, value, proj (encoder)"
        )
    return cast(PeftModel, get_peft_model(model, lora_config(lora)))


def preset_config(preset: str, num_labels: int, frames_per_clip: int) -> VJEPA2Config:
    return VJEPA2Config(**PRESETS[preset], frames_per_clip=frames_per_clip, num_labels=num_labels)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_base_model(
    model: ModelConfig, classes: list[str], seed: int, device: str | torch.device = "cpu", path: str | None = None
) -> VJEPA2ForVideoClassification:
    """The classifier before LoRA. ``path``: the folder holding the weights (`weights.locate`); None loads
    ``model.source`` at ``model.revision`` as written. ``device="meta"`` builds the module tree without allocating
    weights."""
    labels: dict[str, Any] = {
        "num_labels": len(classes),
        "id2label": dict(enumerate(classes)),
        "label2id": {c: i for i, c in enumerate(classes)},
    }
    if model.preset is not None:
        config = preset_config(model.preset, len(classes), model.frames_per_clip)
        config.update({"id2label": labels["id2label"], "label2id": labels["label2id"]})
        with _seeded(seed), torch.device(device):
            return VJEPA2ForVideoClassification(config)
    if path is None and model.source_kind == "s3":
        raise ModelUnavailable(
            f"model.source {model.source!r} is in object storage: fetch it first (lorasweep_trainer.weights.locate)"
        )
    where = path if path is not None else model.source
    # A local folder is read as it is; a revision applies to a hub name only.
    pinned: dict[str, Any] = {"revision": model.revision} if path is None and model.revision else {}
    if torch.device(device).type == "meta":
        with _loading(model.source):
            config = VJEPA2Config.from_pretrained(where, **pinned, **labels)
        with torch.device("meta"):
            return VJEPA2ForVideoClassification(config)
    with _seeded(seed), _loading(model.source):
        # The hub checkpoint's head has other classes (e.g. 174 for SSv2): replace it rather than fail.
        loaded = VJEPA2ForVideoClassification.from_pretrained(where, ignore_mismatched_sizes=True, **pinned, **labels)
    return cast(VJEPA2ForVideoClassification, loaded.to(device))


def build_processor(config: VJEPA2Config) -> VJEPA2VideoProcessor:
    """V-JEPA2's own preprocessing (resize the short side to crop x 256/224, centre crop, ImageNet norm)."""
    return VJEPA2VideoProcessor(crop_size=config.crop_size)


# --- the base model's identity, recorded with the adapter and read back by predict and merge -----------------


def model_identity(model: ModelConfig, weights: ModelWeights | None = None) -> tuple[str, str | None]:
    """Where the base weights come from (a hub name, an s3:// folder or a volume path) and at which revision:
    config.model_identity, with the revision the sweep's preparation resolved and pinned (``weights``)."""
    identity = contract.model_identity(model, weights)
    return identity.source, identity.revision


def model_config_for(base: AdapterBase, frames_per_clip: int, source: str | None = None) -> ModelConfig:
    """The ModelConfig that builds ``base`` again (the inverse of `model_identity` and `base_reference`);
    ``source``: another hub name or folder holding the same weights. A hub commit recorded with the base pins it;
    an s3 or volume folder's revision is its content digest, checked by `base_digest` instead."""
    if base.preset is not None:
        return ModelConfig(preset=base.preset, frames_per_clip=frames_per_clip)
    where = source or base.name_or_path
    hub_commit = base.revision if source is None and contract.model_source_kind(where) == "hub" else None
    return ModelConfig(source=where, revision=hub_commit, frames_per_clip=frames_per_clip)


def base_reference(
    model: ModelConfig, seed: int, loaded: VJEPA2ForVideoClassification, weights: ModelWeights | None = None
) -> tuple[str, str | None]:
    """The adapter's ``base_model_name_or_path`` and ``revision``: ``preset:<name>`` at ``seed-<seed>`` for a
    preset; else model.source at the revision the preparation pinned (``weights``: a hub commit, or sha256:<digest>
    of an s3 or volume folder) or asked for, or else the hub commit the weights came from (None for a folder)."""
    if model.preset is not None:
        return f"{PRESET_PREFIX}{model.preset}", f"{PRESET_REVISION_PREFIX}{seed}"
    name, revision = model_identity(model, weights)
    commit = getattr(loaded.config, "_commit_hash", None)
    return name, revision or (commit if isinstance(commit, str) and commit else None)


ENCODER_PREFIX = "vjepa2.encoder."  # where model.vjepa2.encoder's keys are in the whole model's state_dict


def base_digest(model: VJEPA2ForVideoClassification, encoder: str | None = None) -> str:
    """SHA-256 of the base weights an adapter applies to: everything but the classifier (new for our classes, and
    saved in the adapter in full), so a rebuilt base can be checked before the adapter goes on it. It is taken over
    the encoder's digest (`cache.encoder_digest`; ``encoder``: already taken, as a trial does for its feature
    shards) and the rest's, so the encoder, most of the weights, is hashed once per trial."""
    encoder = encoder or encoder_digest(model.vjepa2.encoder)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(("classifier.", ENCODER_PREFIX))}
    return hashlib.sha256(f"encoder {encoder} rest {tensors_digest(rest)}".encode()).hexdigest()


def name_adapter_base(model: PeftModel, name_or_path: str, revision: str | None) -> None:
    """Fill the adapter's ``base_model_name_or_path`` and ``revision`` (adapter_config.json) before it is saved:
    peft takes the model's ``name_or_path``, empty for a preset, and never knows the hub commit."""
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = name_or_path
        peft_config.revision = revision


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def trainable_parameters(model: PeftModel) -> list[torch.nn.Parameter]:
    """What the optimizer updates: the LoRA matrices and the classifier (``LORA_MODULES_TO_SAVE``)."""
    return [p for p in model.parameters() if p.requires_grad]


def lora_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable weights (LoRA matrices and the saved classifier): the best epoch's state."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_lora_state(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# --- the frozen encoder and the trained head, apart (the sweep's feature cache) ----------------------------


def encoder_module_names(model: VJEPA2ForVideoClassification) -> frozenset[str]:
    return frozenset(name.rsplit(".", 1)[-1] for name, _ in model.vjepa2.encoder.named_modules() if name)


def feature_cache_blocker(model: VJEPA2ForVideoClassification, lora: LoraConfig) -> str | None:
    """Why this model's encoder output cannot be cached under ``lora`` (None when it can): a LoRA target inside
    the encoder, or randomness in it while training (attention dropout, drop-path)."""
    return encoder_randomness(model) or contract.feature_cache_blocker(lora, encoder_module_names(model))


def encoder_randomness(model: VJEPA2ForVideoClassification) -> str | None:
    """What makes the encoder random while training (attention dropout, drop-path), or None."""
    randomness = {
        name: value
        for name in ("attention_probs_dropout_prob", "drop_path_rate")
        if (value := getattr(model.config, name, 0.0)) > 0
    }
    if randomness:
        return f"the encoder is random while training ({randomness}), so its output cannot be computed once"
    return None


def encoder_features(
    model: VJEPA2ForVideoClassification, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Normalised pixels (B, T, C, H, W) -> the encoder's last hidden state (B, tokens, hidden): what the
    classifier's forward feeds its pooler (``skip_predictor=True``), computed in eval mode without gradients."""

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        model.vjepa2.eval()
        with autocast(device):
            out = model.vjepa2(pixel_values_videos=pixels.to(device), skip_predictor=True).last_hidden_state
        return cast(torch.Tensor, out)

    return encode


def head_logits(model: PeftModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Encoder features -> logits through the (LoRA-adapted) pooler and the classifier, as the full forward does."""
    base = model.get_base_model()

    def forward(features: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, base.classifier(base.pooler(features)))

    return forward
