"""The check every upstream bug's symptom passes under each pinned release
(tests/matrix/test_release.py for SSIM's, test_uqi_release.py for UQI's)."""

from __future__ import annotations

from typing import Any, Callable

import ssim_patch


def assert_reproduces_unpatched_and_the_patch_fixes_it(
    release: dict[str, Any], bug: str, symptom: Callable[[], Any]
) -> None:
    """``symptom()`` shows exactly when the compat matrix lists ``bug`` for ``release``, and never
    once the patch is applied."""
    has_bug = bug in release["upstream_bugs"]
    assert bool(symptom()) is has_bug, (
        f"torchmetrics {release['version']}: {bug} {'does not reproduce' if has_bug else 'shows'} unpatched"
    )
    ssim_patch.apply()
    assert not symptom(), f"{bug} still shows with the patch applied"
