"""Which region names are real: ECR's regions from botocore's endpoint data.

The list moves with the botocore pin (through aioboto3), so a region AWS opens shows up
when the pin moves. Private partitions (ISO, sovereign clouds) have regions this data does
not list; `aws.allow_unknown_regions` turns the check off for them.
"""

from __future__ import annotations

import functools

import botocore.session

# The public partitions: the ones a gateway reaching AWS through ordinary endpoints serves.
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")


@functools.cache
def known_regions(partitions: tuple[str, ...] = PARTITIONS) -> frozenset[str]:
    """ECR's region names in `partitions`, per the installed botocore's endpoint data.

    Loaded on first use (not at import) and kept: the data is fixed for the process.
    """
    session = botocore.session.get_session()
    regions: set[str] = set()
    for partition in partitions:
        regions.update(session.get_available_regions("ecr", partition_name=partition))
    return frozenset(regions)
