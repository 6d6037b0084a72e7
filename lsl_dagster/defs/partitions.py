"""Experiments are partitions: one partition key per experiment id."""

from dagster import StaticPartitionsDefinition


def experiments_partitions(ids: list[str]) -> StaticPartitionsDefinition:
    return StaticPartitionsDefinition(ids)
