"""The driver conformance suite, run against S3Driver on a moto_server bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from layergc.driver.s3 import S3Driver
from layergc.errors import PathNotFound
from tests.driver_conformance import DriverConformance
from tests.support.s3server import MotoServer, make_s3_driver

pytest_plugins = ["tests.conftest_s3"]

pytestmark = pytest.mark.s3


class TestS3Driver(DriverConformance):
    @pytest.fixture
    def driver(self, moto_server: MotoServer, s3_bucket: str) -> Iterator[S3Driver]:
        # A rootdirectory, so every test also checks that paths map to keys under it.
        driver = make_s3_driver(moto_server, s3_bucket, rootdirectory="/conformance/")
        yield driver
        driver.close()

    def test_delete_while_walking(self, driver: S3Driver) -> None:  # type: ignore[override]
        """S3 walks one flat listing a page at a time: what is deleted after its
        page was fetched is still reported (acting on it finds it gone), what is
        deleted before is not, and the walk goes on either way."""
        driver.list_max = 5  # 20 folders of one file: four pages
        for i in range(20):
            driver.put_content(f"/w/d{i:02}/f", b"x")
        seen = []
        for info in driver.walk("/w"):
            seen.append(info.path)
            if info.path == "/w/d00":
                for i in range(10, 20):
                    driver.delete(f"/w/d{i:02}")
        assert "/w/d00/f" in seen
        assert "/w/d09/f" in seen
        assert "/w/d15/f" not in seen  # on a page fetched after the delete
        with pytest.raises(PathNotFound):
            driver.stat("/w/d15/f")
