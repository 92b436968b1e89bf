"""Image and text processors, each registered by name."""

from lavislite.processors.base_processor import BaseProcessor
from lavislite.processors.blip_processors import (
    Blip2ImageTrainProcessor,
    BlipCaptionProcessor,
    BlipImageEvalProcessor,
    BlipQuestionProcessor,
    build_processor,
)
from lavislite.processors.chat_processor import QwenChatProcessor

__all__ = [
    "BaseProcessor",
    "Blip2ImageTrainProcessor",
    "BlipCaptionProcessor",
    "BlipImageEvalProcessor",
    "BlipQuestionProcessor",
    "QwenChatProcessor",
    "build_processor",
]
