"""Small real-format datasets, tiny model configs and the README's pipeline commands, for workflow tests.

* :func:`write_waterbirds` writes a Waterbirds folder in group_DRO's layout (``metadata.csv``
  and CUB-style species folders of JPEGs) whose pictures carry the label (the bird's
  colour) and the spurious attribute (the background), correlated in the train split;
* :func:`write_civilcomments` writes WILDS' ``all_data_with_identities.csv`` with comments
  whose toxic words give the label and whose identity mentions are spuriously correlated
  with it in the train split;
* :func:`write_tiny_bert` saves a two-layer BERT and a word-level tokenizer built here
  (nothing is downloaded);
* :func:`readme_pipeline` reads the fenced shell block of the README's "Reproducing the
  pipeline" section, and :func:`expand_commands` lets bash expand it (loops, variables,
  ``VAR=value`` prefixes) into the ``gradtune`` calls it makes, without running them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.data.test_civilcomments import write_civilcomments as write_civilcomments_csv

README = Path(__file__).resolve().parents[2] / "README.md"
PIPELINE_HEADING = "### Reproducing the pipeline"

# Rows per split of each group (landbird,land) (landbird,water) (waterbird,land) (waterbird,water):
# train is 80% aligned, validation and test are balanced.
WATERBIRDS_COUNTS = {0: (12, 3, 3, 12), 1: (5, 5, 5, 5), 2: (4, 4, 4, 4)}
_SPECIES = {0: ("013.Bobolink", "Bobolink"), 1: ("086.Pacific_Loon", "Pacific_Loon")}
_PLACES = {0: "/b/bamboo_forest/{:08d}.jpg", 1: "/o/ocean/{:08d}.jpg"}
_BIRD_RGB = {0: (230, 170, 30), 1: (245, 245, 245)}
_PLACE_RGB = {0: (60, 120, 40), 1: (40, 80, 200)}


def write_waterbirds(folder: Path, *, seed: int = 0, side: int = 32,
                     counts: dict[int, tuple[int, ...]] = WATERBIRDS_COUNTS) -> dict[str, np.ndarray]:
    """Write ``metadata.csv`` and one ``side`` x ``side`` JPEG per row into ``folder``.

    Returns
    -------
    dict
        ``y``, ``place``, ``split`` (N,) int arrays in file order (rows are shuffled).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = [(y_place // 2, y_place % 2, split) for split, cs in counts.items()
            for y_place, c in enumerate(cs) for _ in range(c)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    yy, xx = np.mgrid[0:side, 0:side]
    bird = ((yy - side / 2) / (side / 4)) ** 2 + ((xx - side / 2) / (side / 3)) ** 2 <= 1.0
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for i, (y, place, split) in enumerate(rows):
        img = np.empty((side, side, 3), dtype=np.float64)
        img[:] = _PLACE_RGB[place]
        img[bird] = _BIRD_RGB[y]
        img += rng.normal(0.0, 25.0, size=img.shape)
        folder_name, stem = _SPECIES[y]
        fname = f"{folder_name}/{stem}_{i:04d}_{1000 + i}.jpg"
        path = folder / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path, format="JPEG", quality=90)
        lines.append(f"{i + 1},{fname},{y},{split},{place},{_PLACES[place].format(i)}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    arr = np.asarray(rows, dtype=np.int64)
    return {"y": arr[:, 0], "place": arr[:, 1], "split": arr[:, 2]}


# CivilComments: (split, toxic, identity) -> rows; train 80% aligned (toxic comments mention an identity).
CIVIL_COUNTS = {"train": (16, 4, 4, 16), "val": (6, 6, 6, 6), "test": (6, 6, 6, 6)}
_TOXIC = ("idiot", "stupid", "awful", "hate")
_KIND = ("great", "kind", "thanks", "good")
_IDENTITY = ("muslim", "christian", "black", "white", "female", "male")
_FILLER = ("the", "people", "this", "is", "comment", "about", "here", "really")
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_TOXIC, *_KIND, *_IDENTITY, *_FILLER)


def write_civilcomments(folder: Path, *, seed: int = 0,
                        counts: dict[str, tuple[int, ...]] = CIVIL_COUNTS) -> dict[str, np.ndarray]:
    """Write WILDS' ``all_data_with_identities.csv`` into ``folder``.

    Groups are (non-toxic, no identity), (non-toxic, identity), (toxic, no identity),
    (toxic, identity); ``counts[split][g]`` rows of group ``g``.

    Returns
    -------
    dict
        ``y``, ``identity``, ``split`` (N,) arrays in file order.
    """
    rng = np.random.default_rng(seed)
    rows, meta = [], []
    order = [(split, g) for split, cs in counts.items() for g, c in enumerate(cs) for _ in range(c)]
    for i in rng.permutation(len(order)):
        split, g = order[i]
        toxic, has_identity = divmod(g, 2)
        words = list(rng.choice(_FILLER, size=4))
        words.insert(int(rng.integers(0, 5)), str(rng.choice(_TOXIC if toxic else _KIND)))
        ids: dict[str, float] = {}
        if has_identity:
            who = str(rng.choice(_IDENTITY))
            words.insert(int(rng.integers(0, 6)), who)
            ids[who] = 1.0
        rows.append((" ".join(words), split, 0.8 if toxic else 0.1, ids))
        meta.append((toxic, has_identity, {"train": 0, "val": 1, "test": 2}[split]))
    write_civilcomments_csv(folder, rows)
    arr = np.asarray(meta, dtype=np.int64)
    return {"y": arr[:, 0], "identity": arr[:, 1], "split": arr[:, 2]}


def write_tiny_bert(folder: Path) -> Path:
    """Save a 2-layer, 32-wide BERT (initialized under seed 0) and a tokenizer over :data:`VOCAB`."""
    import transformers

    from gradtune.training.trainer import seeded_scope

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    with seeded_scope(0):
        model = transformers.BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


TINY_RESNET_CONFIG = """\
# A tiny ResNet (one basic block per stage, width 8) on 32 x 32 pictures, one epoch.
[model]
arch = "resnet"
layers = [1, 1, 1, 1]
width = 8
weights = "none"

[preprocess]
size = 32
resize_to = 32
crop_scale = [0.7, 1.0]
augment = true

[erm]
optimizer = "sgd"
lr = 0.01
schedule = "cosine"
batch_size = 16
weight_decay = 1e-4
epochs = 1
sampler = "class_balanced"
progress = false
"""

TINY_BERT_CONFIG = """\
# A 2-layer BERT saved in {model_dir}, 16 tokens, one epoch.
[model]
arch = "bert"
name = "{model_dir}"
pooling = "cls"
max_length = 16

[erm]
optimizer = "adamw"
lr = 1e-3
schedule = "linear"
batch_size = 16
weight_decay = 1e-4
epochs = 1
sampler = "class_balanced"
progress = false
"""


def readme_pipeline(readme: Path = README) -> str:
    """The fenced ``bash`` block of the README's pipeline section."""
    text = readme.read_text()
    if PIPELINE_HEADING not in text:
        raise AssertionError(f"README.md has no {PIPELINE_HEADING!r} section")
    section = text.split(PIPELINE_HEADING, 1)[1]
    m = re.search(r"```bash\n(.*?)```", section, flags=re.S)
    if m is None:
        raise AssertionError(f"README.md's {PIPELINE_HEADING!r} section has no ```bash block")
    return m.group(1)


@dataclass(frozen=True)
class Call:
    """One ``gradtune`` call of a shell script: its arguments and the GRADTUNE_* variables it saw."""

    argv: tuple[str, ...]
    env: dict[str, str]


_RECORDER = r"""
set -euo pipefail
__n=0
gradtune() {
    __n=$((__n + 1))
    local f
    printf -v f '%s/%04d' "$GT_CALLS" "$__n"
    : > "$f.env"
    local v
    for v in $(compgen -v GRADTUNE_ || true); do
        if [[ ${!v@a} == *x* ]]; then printf '%s=%s\n' "$v" "${!v}" >> "$f.env"; fi
    done
    printf '%s\0' "$@" > "$f.argv"
}
"""


def expand_commands(script: str, cwd: Path) -> list[Call]:
    """The ``gradtune`` calls ``script`` makes, in order, as bash expands them in ``cwd``.

    ``gradtune`` is replaced by a recorder; PATH is emptied, so any other external
    command in the script fails the expansion (the README block should hold nothing else).
    """
    bash = shutil.which("bash")
    if bash is None:
        raise AssertionError("bash is needed to expand the README's shell block")
    calls_dir = cwd / ".gradtune-calls"
    calls_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADTUNE_")}
    env.update({"PATH": str(calls_dir), "GT_CALLS": str(calls_dir)})
    proc = subprocess.run([bash, "--noprofile", "--norc", "-c", _RECORDER + script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AssertionError(f"bash could not expand the README block (rc {proc.returncode}): {proc.stderr}")
    calls = []
    for f in sorted(calls_dir.glob("*.argv")):
        argv = tuple(a for a in f.read_bytes().decode().split("\0")[:-1])
        env_lines = f.with_suffix(".env").read_text().splitlines()
        calls.append(Call(argv, dict(line.split("=", 1) for line in env_lines if "=" in line)))
    shutil.rmtree(calls_dir)
    return calls
