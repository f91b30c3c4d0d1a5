"""Environment images for relighting: HDR files decode to linear radiance; bad files are one message."""
import numpy as np
import pytest

from stages.common.envmap import read_environment
from stages.common.sh import project_env_to_sh
from stages.errors import NeroicError


def test_radiance_hdr_reads_back_and_projects(tmp_path):
    import cv2

    env = np.full((32, 64, 3), 0.5, np.float32)
    env[:16] = (1.0, 2.0, 4.0)  # a bright, blue upper hemisphere
    cv2.imwrite(str(tmp_path / "sky.hdr"), env[..., ::-1])  # OpenCV writes BGR
    read = read_environment(tmp_path / "sky.hdr")
    assert read.shape == (32, 64, 3)
    assert np.allclose(read[0, 0], (1.0, 2.0, 4.0), rtol=0.02) and np.allclose(read[-1, -1], 0.5, rtol=0.02)
    sh = project_env_to_sh(read)
    assert (sh[1] > 0).all()  # Y1-1 goes with +Y, the up axis (row 0): the bright top tilts band 1 up
    assert np.argmax(sh[0]) == 2  # the ambient term is bluest


def test_corrupt_hdr_is_one_message(tmp_path):
    (tmp_path / "bad.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 4\n\x02")
    with pytest.raises(NeroicError, match="not a readable .hdr or .exr"):
        read_environment(tmp_path / "bad.hdr")
