"""Images read and prepared in background worker processes, ahead of the model.

A study's image is read by :func:`cxrgen.imaging.read_image` (any CXR file -> 8-bit grey) and handed to the
backend's image preparer, in DataLoader workers (``loader.num_workers``). An image that cannot be read or prepared
costs its own study only: the worker hands back the error instead of inputs. Used by the run (:mod:`cxrgen.runner`)
and by anything else that feeds a dataset's images to a model (the retrieval backend's index build).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .datasets import Study
from .threads import allotted_cpus


@dataclass(frozen=True)
class PrepareStudy:
    """Picklable per-study work for DataLoader workers: read the image, hand it to the backend's preparer."""

    prepare_image: Callable[[Any], Any]
    max_pixels: int
    percentile_window: tuple[float, float] | None

    @classmethod
    def for_loader(cls, prepare_image: Callable[[Any], Any], loader_cfg) -> "PrepareStudy":
        """With the image limits of ``loader_cfg`` (a :class:`cxrgen.config.LoaderConfig`)."""
        window = tuple(loader_cfg.percentile_window) if loader_cfg.percentile_window else None
        return cls(prepare_image, loader_cfg.max_pixels, window)

    def __call__(self, study: Study) -> tuple[Study, Any, str]:
        from .imaging import ImageReadError, read_image

        try:
            image = read_image(study.image_paths[0], max_pixels=self.max_pixels,
                               percentile_window=self.percentile_window)
            return study, self.prepare_image(image), ""
        except ImageReadError as e:
            return study, None, str(e)
        except Exception as e:  # a decoder or preprocessing bug must cost one row, not the run
            return study, None, f"{study.image_paths[0]}: {type(e).__name__}: {e}"


class _StudyDataset:
    def __init__(self, studies: list[Study], prepare: PrepareStudy):
        self.studies, self.prepare = studies, prepare

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int):
        return self.prepare(self.studies[index])


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGUSR1/SIGINT to the main process, which finishes its rows and stops them."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _one(item):
    return item


def prepared_studies(studies: list[Study], prepare: PrepareStudy, num_workers: int,
                     prefetch: int) -> Iterator[tuple[Study, Any, str]]:
    """(study, inputs or None, error) in order, prepared ``prefetch`` studies ahead per worker process."""
    if num_workers == 0:
        for study in studies:
            yield prepare(study)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(_StudyDataset(studies, prepare), batch_size=None, shuffle=False, num_workers=num_workers,
                        collate_fn=_one, prefetch_factor=max(2, prefetch), worker_init_fn=_ignore_stop_signals,
                        persistent_workers=False)
    yield from loader


def worker_count(setting, n_studies: int) -> int:
    """loader.num_workers, with auto = one per allotted CPU beyond the first, at most 8, never more than studies."""
    if setting != "auto":
        return int(setting)
    return max(0, min(allotted_cpus() - 1, 8, n_studies - 1))
