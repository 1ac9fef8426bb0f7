"""dramasearch: encode with DRAMA, index at Matryoshka dims, search, evaluate."""
from .build import BuildReport, BuildSettings, add_dims, build_index
from .encoder import Encoder, EncoderSpec
from .errors import DramaSearchError, IndexFormatError, InputError, ModelLoadError
from .models import load_encoder
from .searcher import Hit, Searcher

__all__ = [
    "BuildReport", "BuildSettings", "DramaSearchError", "Encoder", "EncoderSpec", "Hit", "IndexFormatError",
    "InputError", "ModelLoadError", "Searcher", "add_dims", "build_index", "load_encoder",
]
