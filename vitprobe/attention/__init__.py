"""Where a ViT looks: raw attention maps, rollout, gradient rollout, mean attention distance,
captum attributions for ViTs and CNNs alike, and how good each map is."""

from vitprobe.attention.attributions import attributions
from vitprobe.attention.capture import AttentionMapsResult, attention_maps
from vitprobe.attention.distance import AttentionDistanceResult, mean_attention_distance
from vitprobe.attention.gradient_rollout import gradient_rollout
from vitprobe.attention.maps import SaliencyResult
from vitprobe.attention.methods import explain
from vitprobe.attention.quality import MapQualityResult, map_quality, random_maps
from vitprobe.attention.rollout import attention_rollout
from vitprobe.models.token_layout import TokenLayout

__all__ = [
    "AttentionDistanceResult",
    "AttentionMapsResult",
    "MapQualityResult",
    "SaliencyResult",
    "TokenLayout",
    "attention_maps",
    "attention_rollout",
    "attributions",
    "explain",
    "gradient_rollout",
    "map_quality",
    "mean_attention_distance",
    "random_maps",
]
