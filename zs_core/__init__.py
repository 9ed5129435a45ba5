"""ZS Texturing core: noise, attention, synchronisation and sampling (bpy never; torch
only in the modules marked (T)). Importing the package itself loads nothing heavy."""

__version__ = "0.1.0"


def _hide_image_processor_fallback_warning() -> None:
    """Importing diffusers' pipelines makes transformers warn that its image processors
    fall back to PIL without torchvision. ZS never uses an image processor (no safety
    checker, no feature extractor), so the two lines are noise at every start."""
    import logging

    logging.getLogger("transformers.utils.import_utils").addFilter(
        lambda record: "requires torchvision (not installed)" not in record.getMessage())


_hide_image_processor_fallback_warning()
