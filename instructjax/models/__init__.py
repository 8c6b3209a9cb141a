"""Decoder-only transformers (GPT-2; Llama, Mistral, Qwen2, Qwen3) and HF checkpoint interop."""

from instructjax.models.model_config import ModelConfig
from instructjax.models.hf_interop import from_hf, to_hf
from instructjax.models.transformer import CausalLM, ScalarModel, last_token_value

__all__ = [
    "ModelConfig", "CausalLM", "ScalarModel", "last_token_value", "from_hf", "to_hf"]
