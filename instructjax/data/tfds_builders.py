"""TensorFlow Datasets builders for the preference datasets, readable without TensorFlow.

Every builder reads published files from a manual directory
(`tfds.download.DownloadConfig(manual_dir=...)`) and writes the `array_record` format,
which `builder.as_data_source()` / `tfds.data_source(...)` read with no TensorFlow
installed. `RecordSource` turns such a data source back into common records for the
input pipelines. Builders are strict; `skip_bad_rows=True` (a builder keyword, also
`tfds.data_source(..., builder_kwargs={"skip_bad_rows": True})`) drops bad rows and
stores their count per split in `builder.info.metadata["bad_rows"]`.

  builder = HhRlhf(config="helpful-base", data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  train = RecordSource(builder.as_data_source()["train"])

`DATASETS` names the datasets that `config.data.source = "tfds"` builds (see
`instructjax.data.prompt_splits`): each one's builder, the splits a run derives its data
from, and the files its manual dir must hold; `read_manual_dataset` checks that layout
first, then prepares the builder(s) and reads both splits back as records.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from instructjax.data import hh_rlhf, tldr
from instructjax.data.records import (DataError, RankingRecord, ReadResult, SftRecord,
                                      read_jsonl)

_RANKING_FEATURES = {
    "prompt": tfds.features.Text(),
    "responses": tfds.features.Sequence(tfds.features.Text()),  # K texts
    "ranking": tfds.features.Sequence(np.int32),  # response indices, best first
    "labeler": np.int32,  # -1: unknown
}
_SFT_FEATURES = {"prompt": tfds.features.Text(), "response": tfds.features.Text()}


def _ranking_example(record: RankingRecord) -> dict[str, Any]:
  return {"prompt": record.prompt, "responses": list(record.responses),
          "ranking": list(record.ranking), "labeler": record.labeler}


def _sft_example(record: SftRecord) -> dict[str, Any]:
  return {"prompt": record.prompt, "response": record.response}


def _find(manual_dir: Any, names: Sequence[str]) -> Any:
  """The first of `names` that exists under manual_dir, else None."""
  for name in names:
    if (manual_dir / name).exists():
      return manual_dir / name
  return None


class _ManualJsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing: array_record output, skip_bad_rows, bad-row counts in metadata."""

  VERSION = tfds.core.Version("1.0.0")
  _FEATURES: dict[str, Any] = _RANKING_FEATURES
  _TO_EXAMPLE = staticmethod(_ranking_example)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds's own lookup probes `importlib_resources`, which tfds does not install; this
    # is the answer it falls back to.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, skip_bad_rows: bool = False, **kwargs):
    self._skip_bad_rows = skip_bad_rows
    kwargs.setdefault("file_format", "array_record")  # tfrecord would need TensorFlow
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(dict(self._FEATURES)),
        metadata=tfds.core.MetadataDict(bad_rows={}))

  def _generate_examples(self, split: str, result: ReadResult):
    """Yields (key, example) and records how many bad rows were skipped."""
    self.info.metadata["bad_rows"][split] = result.num_bad_rows
    for i, record in enumerate(result.records):
      yield i, self._TO_EXAMPLE(record)


class HhRlhf(_ManualJsonlBuilder):
  """Anthropic HH-RLHF pairs as K=2 rankings (chosen first); one config per subset."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"HH-RLHF {name}")
                     for name in hh_rlhf.SUBSETS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download the published files from https://github.com/anthropics/hh-rlhf and keep "
      "the layout: <manual_dir>/<subset>/train.jsonl.gz and "
      "<manual_dir>/<subset>/test.jsonl.gz for each subset in "
      f"{', '.join(hh_rlhf.SUBSETS)} (only the subsets you build are needed).")

  def _split_generators(self, dl_manager):
    subset_dir = dl_manager.manual_dir / self.builder_config.name
    splits = {}
    for split in ("train", "test"):
      path = subset_dir / f"{split}.jsonl.gz"
      if not path.exists():
        raise DataError(f"missing {path}. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
      splits[split] = self._generate_examples(
          split, hh_rlhf.read_hh_rlhf(path, skip_bad_rows=self._skip_bad_rows))
    return splits


class TldrComparisons(_ManualJsonlBuilder):
  """summarize-from-feedback TL;DR comparisons as K=2 rankings (chosen first).

  Splits follow each row's "split" field: train, valid1 (model selection), valid2 (final
  evaluation).
  """

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Copy https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/"
      "comparisons/batch*.json (e.g. with `azcopy copy`) to <manual_dir>/comparisons/ "
      "(the TL;DR comparison batches; cnndm*.json are not read).")

  def _split_generators(self, dl_manager):
    paths = sorted(dl_manager.manual_dir.glob("comparisons/batch*.json"))
    if not paths:
      raise DataError(f"no comparisons/batch*.json under {dl_manager.manual_dir}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(split, tldr.read_tldr_comparisons(
        paths, split=split, skip_bad_rows=self._skip_bad_rows))
            for split in tldr.COMPARISON_SPLITS}


class TldrSft(_ManualJsonlBuilder):
  """The filtered Reddit TL;DR demonstrations (post -> reference summary) as SFT records."""

  _FEATURES = _SFT_FEATURES
  _TO_EXAMPLE = staticmethod(_sft_example)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Copy train.jsonl, valid.jsonl and test.jsonl from https://openaipublic.blob.core."
      "windows.net/summarize-from-feedback/datasets/tldr_3_filtered/ into <manual_dir>/ "
      "(train.jsonl is required; the others become the validation and test splits).")

  def _split_generators(self, dl_manager):
    files = {"train": "train.jsonl", "validation": "valid.jsonl", "test": "test.jsonl"}
    paths = {split: _find(dl_manager.manual_dir, [name]) for split, name in files.items()}
    if paths["train"] is None:
      raise DataError(f"missing {dl_manager.manual_dir / 'train.jsonl'}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(split, tldr.read_tldr_sft(
        path, skip_bad_rows=self._skip_bad_rows))
            for split, path in paths.items() if path is not None}


class JsonlPreferences(_ManualJsonlBuilder):
  """Any rankings in the generic JSON-lines schema (see `instructjax.data.records`)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put ranking records, one JSON object per line ({\"prompt\", \"responses\", "
      "\"ranking\", optional \"labeler\"}), in <manual_dir>/train.jsonl and optionally "
      "validation.jsonl and test.jsonl (each may be gzip-compressed as *.jsonl.gz).")

  def _split_generators(self, dl_manager):
    paths = {split: _find(dl_manager.manual_dir, [f"{split}.jsonl", f"{split}.jsonl.gz"])
             for split in ("train", "validation", "test")}
    if paths["train"] is None:
      raise DataError(f"missing {dl_manager.manual_dir / 'train.jsonl'}. "
                      f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return {split: self._generate_examples(split, read_jsonl(
        path, "ranking", skip_bad_rows=self._skip_bad_rows))
            for split, path in paths.items() if path is not None}


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_from_example(example: dict[str, Any]) -> RankingRecord | SftRecord:
  """A decoded example of one of these builders -> its record."""
  if "responses" in example:
    return RankingRecord(_text(example["prompt"]),
                         tuple(_text(r) for r in example["responses"]),
                         tuple(int(i) for i in example["ranking"]),
                         labeler=int(example["labeler"]))
  return SftRecord(_text(example["prompt"]), _text(example["response"]))


class RecordSource(Sequence):
  """A TFDS data source (random access) seen as a sequence of records."""

  def __init__(self, data_source: Any):
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):  # IndexError also ends iteration
      raise IndexError(f"index {index} is out of range for {len(self)} records")
    return record_from_example(self.data_source[index % len(self)])


def read_all(data_source: Any, *, chunk: int = 4096) -> list[RankingRecord | SftRecord]:
  """Every record of a TFDS data source, in order; read a chunk of rows per call, which is
  about 3x faster than one row at a time."""
  out = []
  for start in range(0, len(data_source), chunk):
    indices = list(range(start, min(start + chunk, len(data_source))))
    out.extend(record_from_example(e) for e in data_source.__getitems__(indices))
  return out


@dataclasses.dataclass(frozen=True)
class ManualDataset:
  """A preference dataset built from a manual dir: its builder, the split a run's training
  data comes from and the one its evaluation data comes from, and the files it needs."""
  builder: type
  train_split: str
  test_split: str
  # Each entry: the names (globs) of which one must exist under manual_dir; "{subset}"
  # stands for each HH-RLHF subset built.
  files: tuple[tuple[str, ...], ...]
  download: str  # where the files come from
  has_subsets: bool = False


DATASETS = {
    "hh_rlhf": ManualDataset(
        HhRlhf, "train", "test",
        (("{subset}/train.jsonl.gz",), ("{subset}/test.jsonl.gz",)),
        "https://github.com/anthropics/hh-rlhf (keep the subset directories)",
        has_subsets=True),
    # valid2 is the comparisons' final-evaluation split; valid1 (model selection) is unused.
    "tldr": ManualDataset(
        TldrComparisons, "train", "valid2", (("comparisons/batch*.json",),),
        "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/"
        "comparisons/ (the batch*.json files)"),
    "jsonl_preferences": ManualDataset(
        JsonlPreferences, "train", "test",
        (("train.jsonl", "train.jsonl.gz"), ("test.jsonl", "test.jsonl.gz")),
        "your own ranking records, one JSON object per line (instructjax.data.records)"),
}


def dataset_spec(name: str) -> ManualDataset:
  if name not in DATASETS:
    raise DataError(f"config.data.dataset={name!r} is not one of {tuple(DATASETS)}")
  return DATASETS[name]


def _layout(spec: ManualDataset, subsets: Sequence[str]) -> list[tuple[str, ...]]:
  """Each required file's alternative names under manual_dir, subsets filled in."""
  if not spec.has_subsets:
    return list(spec.files)
  return [tuple(name.format(subset=subset) for name in names)
          for subset in subsets for names in spec.files]


def check_manual_dir(name: str, manual_dir: str, *, subsets: Sequence[str] = ()) -> None:
  """Raises DataError, printing the expected layout, unless manual_dir holds every file
  that dataset `name` needs (for HH-RLHF, those of `subsets`)."""
  spec = dataset_spec(name)
  layout = _layout(spec, subsets)
  root = epath.Path(manual_dir) if manual_dir else None
  if root is None or not root.is_dir():
    problem = "is not a directory" if manual_dir else "is not set"
  else:
    missing = [names[0] for names in layout if not any(any(root.glob(n)) for n in names)]
    if not missing:
      return
    problem = "lacks " + ", ".join(missing)
  expected = "\n".join(f"  {os.path.join(manual_dir or '<manual_dir>', names[0])}"
                        + "".join(f" (or {n})" for n in names[1:]) for names in layout)
  raise DataError(
      f"config.data.manual_dir={manual_dir!r} {problem}. Dataset {name!r} expects:\n"
      f"{expected}\nwith the files from {spec.download}; set config.data.manual_dir to "
      "that directory")


@dataclasses.dataclass
class ManualSplits:
  """The records of a dataset's train and test splits, and the rows skipped building them
  (builder name -> split -> count)."""
  train: list[RankingRecord]
  test: list[RankingRecord]
  bad_rows: dict[str, dict[str, int]]


def _prepared(builder, manual_dir: str):
  """The builder, its dataset prepared (once: tfds reuses it) from manual_dir alone."""
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))  # never the network
  return builder


def read_tldr_sft_dir(manual_dir: str, *, data_dir: str,
                      skip_bad_rows: bool = False) -> tuple[list[SftRecord], dict[str, int]]:
  """The filtered TL;DR demonstrations' train split, prepared (once) by `TldrSft` under
  data_dir; -> (records, rows skipped per split)."""
  builder = _prepared(TldrSft(data_dir=data_dir, skip_bad_rows=skip_bad_rows), manual_dir)
  bad_rows = builder.info.metadata["bad_rows"]
  return (read_all(builder.as_data_source()["train"]),
          {split: int(n) for split, n in bad_rows.items()})


def read_manual_dataset(name: str, *, manual_dir: str, data_dir: str,
                        subsets: Sequence[str] = (),
                        skip_bad_rows: bool = False) -> ManualSplits:
  """Checks manual_dir's layout, prepares the builder(s) under data_dir (once: tfds reuses
  a prepared dataset) and reads the train and test splits back, without TensorFlow.
  HH-RLHF subsets are concatenated in the order given."""
  spec = dataset_spec(name)
  check_manual_dir(name, manual_dir, subsets=subsets)
  configs = list(subsets) if spec.has_subsets else [None]
  splits = ManualSplits(train=[], test=[], bad_rows={})
  for config in configs:
    builder = _prepared(spec.builder(config=config, data_dir=data_dir,
                                     skip_bad_rows=skip_bad_rows), manual_dir)
    sources = builder.as_data_source()
    splits.train.extend(read_all(sources[spec.train_split]))
    splits.test.extend(read_all(sources[spec.test_split]))
    bad_rows = builder.info.metadata["bad_rows"]
    splits.bad_rows[builder.info.full_name] = {
        split: int(bad_rows.get(split, 0)) for split in (spec.train_split, spec.test_split)}
  return splits
