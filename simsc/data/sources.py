"""Where each data set comes from: the official files, what they are and where they land.

``simsc download <name> --root DIR`` installs data set ``name`` as one folder,
``DIR/<Dataset.folder>``, built from the files below:

* ``kind == "archive"``: a ``.zip`` / ``.tar.gz`` whose contents are extracted into
  ``DIR/<folder>/<dest>`` (``dest == ""``: the data set folder itself);
* ``kind == "file"``: a plain file (a pair list) copied to ``DIR/<folder>/<dest>``.

Layout after ``simsc download`` (image paths inside the pair lists are relative to the
data set folder, e.g. ``PF-dataset-PASCAL/JPEGImages/2008_006579.jpg``); the loader root
(``Dataset.loader_root``, what ``simsc download`` prints and :func:`download_dataset` returns)
is the folder that the loaders of :mod:`simsc.data.registry` take as ``root``::

    DIR/pf-pascal/PF-dataset-PASCAL/{JPEGImages,Annotations}/...   loader root: DIR/pf-pascal
    DIR/pf-pascal/{train,val,test}_pairs.csv
    DIR/pf-willow/PF-dataset/<category>/...                         loader root: DIR/pf-willow
    DIR/pf-willow/test_pairs_pf.csv
    DIR/spair-71k/SPair-71k/{JPEGImages,PairAnnotation,Layout,...}  loader root: DIR/spair-71k/SPair-71k

Checksums: ``sha256=None`` means "not known in advance"; the first successful download
records the digest in ``DIR/simsc-download.lock.json`` (trust on first use) and every
later download is verified against it.

Mirrors: a mirror is a flat folder served over HTTP(S) (or ``file://``) that holds the
files under their ``filename``; :func:`resolve_url` replaces the whole
``scheme://host/path/`` prefix of the official URL by the mirror base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["archive", "file"]

#: Environment variable holding a mirror base URL (``--mirror`` on the command line wins).
MIRROR_ENV = "SIMSC_MIRROR"

# The WILLOW group's Proposal Flow data set page (PF-Pascal and PF-Willow images + annotations).
_PROPOSALFLOW = "https://www.di.ens.fr/willow/research/proposalflow/dataset/"
# Pair lists: the URL that peers use. PF-Pascal's train/val/test split with the
# ``source_image,target_image,class,flip`` / ``XA,YA,XB,YB`` columns is the one shipped in
# the NCNet repository (Rocco et al.), reused by most later work.
_NCNET_PAIRS = "https://raw.githubusercontent.com/ignacio-rocco/ncnet/master/datasets/pf-pascal/image_pairs/"
# PF-Willow's test list: the URL that peers use (CNNGeometric / WeakAlign download scripts).
_CNNGEOMETRIC = "https://www.di.ens.fr/willow/research/cnngeometric/other_resources/"
# SPair-71k from POSTECH CVLab (about 217 MiB). The URL that peers use.
_SPAIR = "http://cvlab.postech.ac.kr/research/SPair-71k/data/"


@dataclass(frozen=True)
class SourceFile:
    """One official file of a data set."""

    url: str
    """Official URL (the mirror mechanism replaces everything up to the last ``/``)."""
    filename: str
    """Name under ``<root>/.downloads/``, in the lock file and on a mirror. Unique across data sets."""
    kind: Kind
    """``"archive"`` (zip / tar.gz, extracted) or ``"file"`` (copied as is)."""
    dest: str
    """Relative to the data set folder: extraction folder for an archive (``""`` = the folder
    itself), target path for a plain file."""
    sha256: str | None = None
    """Expected SHA-256 (lower-case hex) when known; ``None``: trust on first use."""


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    """Folder under the data root that ``simsc download`` creates (atomically, all or nothing)."""
    files: tuple[SourceFile, ...]
    expect: tuple[str, ...] = field(default=())
    """Paths (relative to ``folder``) that must exist once everything is extracted."""
    loader_root: str = ""
    """Relative to ``folder``: the folder a loader reads (``""``: ``folder`` itself)."""
    description: str = ""
    max_bytes: int | None = None
    """Most bytes its archives may expand to (an upper bound of the known size with a
    margin); extraction stops beyond it (or beyond the free disk space). ``None``: only
    the free disk space limits it."""


#: name -> where the data set's files come from and where they land (``simsc download``); the
#: loaders that read them are :data:`simsc.data.registry.DATASETS`.
DATASET_SOURCES: dict[str, Dataset] = {
    "pfpascal": Dataset(
        name="pfpascal",
        folder="pf-pascal",
        description="PF-Pascal (Ham et al.): images + .mat keypoint annotations, NCNet pair lists",
        files=(
            SourceFile(_PROPOSALFLOW + "PF-dataset-PASCAL.zip", "PF-dataset-PASCAL.zip", "archive", ""),
            SourceFile(_NCNET_PAIRS + "train_pairs.csv", "train_pairs.csv", "file", "train_pairs.csv"),
            SourceFile(_NCNET_PAIRS + "val_pairs.csv", "val_pairs.csv", "file", "val_pairs.csv"),
            SourceFile(_NCNET_PAIRS + "test_pairs.csv", "test_pairs.csv", "file", "test_pairs.csv"),
        ),
        expect=("PF-dataset-PASCAL",),
        max_bytes=2 << 30,  # a generous upper bound: refuses bombs, not the real archive
    ),
    "pfwillow": Dataset(
        name="pfwillow",
        folder="pf-willow",
        description="PF-Willow (Ham et al.): 900 test pairs, 10 keypoints each",
        files=(
            SourceFile(_PROPOSALFLOW + "PF-dataset.zip", "PF-dataset.zip", "archive", ""),
            SourceFile(_CNNGEOMETRIC + "test_pairs_pf.csv", "test_pairs_pf.csv", "file", "test_pairs_pf.csv"),
        ),
        expect=("PF-dataset",),
        max_bytes=1 << 30,  # a generous upper bound: refuses bombs, not the real archive
    ),
    "spair": Dataset(
        name="spair",
        folder="spair-71k",
        description="SPair-71k (Min et al.): 70,958 pairs, 18 categories",
        files=(SourceFile(_SPAIR + "SPair-71k.tar.gz", "SPair-71k.tar.gz", "archive", ""),),
        expect=("SPair-71k",),
        loader_root="SPair-71k",
        max_bytes=4 << 30,  # the archive is about 217 MiB; a generous upper bound of its contents
    ),
}


def resolve_url(src: SourceFile, mirror: str | None) -> str:
    """The URL to fetch: the official one, or ``<mirror>/<filename>`` when a mirror is set."""
    if not mirror:
        return src.url
    return mirror.rstrip("/") + "/" + src.filename


def get_dataset(name: str, table: Mapping[str, Dataset] | None = None) -> Dataset:
    table = DATASET_SOURCES if table is None else table
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(table))}") from None
