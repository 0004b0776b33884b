"""Commands that teach a ROI: store samples, fit the memory, choose the threshold."""

from __future__ import annotations

from typing import Annotated

from agent.commands import AddNg, CalibrateNg, FitImages, FitOk, Refit
from agent.requests.base import RoiRequest, SamplesRequest
from agent.requests.images import Images
from agent.requests.rules import Flag, Names, Scale, Scores, Shape, rule, within


class FitOkRequest(SamplesRequest):
    command = FitOk
    memory_fit: Flag = True  # false: only store the samples
    shape: Shape = None


class AddNgRequest(SamplesRequest):
    command = AddNg


class FitImagesRequest(SamplesRequest):
    command = FitImages
    shape: Shape = None
    names: Names = ()


class RefitRequest(RoiRequest):
    command = Refit
    mm_per_px: Scale | None = None  # None: the OK dataset's own scale
    shape: Shape = None


class CalibrateNgRequest(RoiRequest):
    """Without ``ok_scores`` the agent scores its stored OK (leave-one-out) and NG samples,
    or ``ok_images`` / ``ng_images`` when given."""

    command = CalibrateNg
    ok_scores: Scores | None = None
    ng_scores: Scores | None = None
    mm_per_px: Scale | None = None
    area_mm2_thr: Annotated[float | None, rule(within(0.0))] = None
    score_percentile: Annotated[float | None, rule(within(0.0, 100.0))] = None
    ok_images: Images | None = None
    ng_images: Images | None = None
