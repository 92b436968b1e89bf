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
from lavislite.processors.llava_processors import LlavaImageProcessor

__all__ = [
    "BaseProcessor",
    "Blip2ImageTrainProcessor",
    "BlipCaptionProcessor",
    "BlipImageEvalProcessor",
    "BlipQuestionProcessor",
    "LlavaImageProcessor",
    "QwenChatProcessor",
    "build_processor",
]
