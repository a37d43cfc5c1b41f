"""Storage drivers: in-memory, filesystem and S3, behind one StorageDriver contract."""

from layergc.driver.base import FileInfo, FileWriter, StorageDriver, validate_path

__all__ = ["FileInfo", "FileWriter", "StorageDriver", "validate_path"]
