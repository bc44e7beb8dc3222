"""Building blocks of JetSeg, one file per block family."""

from .activations import ACTIVATION_LAYERS, REU, TanhExp, create_act, get_act_layer, reu, tanhexp
from .attention import ATTENTION_LAYERS, CBAM, ECA, SAM, create_attention, eca_kernel_size
from .block import ChannelShuffle, ConvBnAct, ConvStem, JetBlock, JetStem, channel_shuffle
from .jetconv import BranchSpec, FusedPointwise, JetConv, MergedDepthwise

__all__ = [
    "ACTIVATION_LAYERS",
    "ATTENTION_LAYERS",
    "CBAM",
    "ECA",
    "REU",
    "SAM",
    "BranchSpec",
    "ChannelShuffle",
    "ConvBnAct",
    "ConvStem",
    "FusedPointwise",
    "JetBlock",
    "JetConv",
    "JetStem",
    "MergedDepthwise",
    "TanhExp",
    "channel_shuffle",
    "create_act",
    "create_attention",
    "eca_kernel_size",
    "get_act_layer",
    "reu",
    "tanhexp",
]
