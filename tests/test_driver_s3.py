"""The driver conformance suite, run against S3Driver on a moto_server bucket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from layergc.driver.s3 import S3Driver
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
