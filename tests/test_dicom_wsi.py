"""DICOM-WSI through OpenSlide (issue 21.5): the CMU slide converted by wsidicomizer (uncompressed frames), read
through this package's slide reader patch for patch against the SVS read by OpenSlide.

Only level 0: the CMU crop has one level, and the levels wsidicomizer adds with ``add_missing_levels=True`` did not
line up with the level below when OpenSlide read them (not investigated further)."""

from __future__ import annotations

import numpy as np
import pytest
from slide_files import cmu_slide

from probmcl_med.data.imageio import SLIDES, open_slide, read_slide_region
from probmcl_med.inference.inputs import is_slide


@pytest.fixture(scope="module")
def dicom(tmp_path_factory):
    from wsidicom.codec import NumpySettings
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.sources import TiffSlideSource  # opentile's source would need the libturbojpeg system library

    svs = cmu_slide()
    folder = tmp_path_factory.mktemp("dicom")
    with WsiDicomizer.open(str(svs), preferred_source=TiffSlideSource, tile_size=256, encoding=NumpySettings()) as wsi:
        wsi.save(folder)
    files = sorted(folder.glob("*.dcm"))
    yield svs, folder, files
    SLIDES.clear()


def test_dicom_wsi_reads_like_the_svs(dicom):
    svs, _, files = dicom
    assert all(is_slide(f) for f in files)
    slide = open_slide(files[0])
    assert slide.properties["openslide.vendor"] == "dicom" and slide.dimensions == (2220, 2967)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, abs=1e-3)
    for x, y, size in [(700, 900, 300), (1500, 2500, 224), (0, 0, 64)]:
        a = np.asarray(read_slide_region({"path": str(files[0]), "x": x, "y": y, "level": 0, "size": size}))
        b = np.asarray(read_slide_region({"path": str(svs), "x": x, "y": y, "level": 0, "size": size}))
        np.testing.assert_array_equal(a, b)  # uncompressed frames: the SVS's decoded pixels, exactly
