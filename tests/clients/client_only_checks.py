"""The Python client's checks that run where only the client is installed.

tests/clients/test_python_client_compat.py runs this file (stdlib unittest: nothing but the
client and its dependencies may be in that venv, not even pytest) with the interpreter of a
throwaway venv holding the oldest or the newest versions the client allows, against a live
gateway it started in the dev venv. What is version-sensitive is what is called: the
generated messages and stubs (protobuf's gencode check, grpcio's generated-version check),
grpc.aio and the blocking channel, trailing metadata, google.rpc details decoded into typed
errors, and the read-modify-write helper. The gateway's address, keys and the expected
versions come in COMPAT_GATEWAY (JSON).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pickle
import unittest
from importlib import metadata, resources
from typing import Any

import registry_gateway_client as client
from google.protobuf import descriptor_pb2
from registry_gateway_client.v1 import registry_pb2 as pb

SETUP: dict[str, Any] = json.loads(os.environ.get("COMPAT_GATEWAY", "{}"))


def statement(sid: str) -> dict[str, Any]:
    """A policy statement on the tenant's own repositories (its slice)."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{SETUP['partner_account']}:root"},
        "Action": ["ecr:CreateRepository", "ecr:ReplicateImage"],
        "Resource": f"arn:aws:ecr:us-east-1:{SETUP['account']}:repository/payments/*",
    }


class Installed(unittest.TestCase):
    """What this venv holds: the client, its dependencies at the pinned ends, nothing else."""

    def test_the_pinned_versions_are_the_ones_installed(self) -> None:
        pins: dict[str, str] = SETUP["pins"]
        installed = {name: metadata.version(name) for name in pins}
        self.assertEqual(installed, pins)

    def test_no_server_no_top_level_ecr_no_connect(self) -> None:
        for name in ("ecr", "service", "moto", "grpc_status", "connectrpc"):
            self.assertIsNone(importlib.util.find_spec(name), name)

    def test_the_connect_module_asks_for_its_extra(self) -> None:
        with self.assertRaises(ModuleNotFoundError) as raised:
            importlib.import_module("registry_gateway_client.v1.registry_connect")
        self.assertEqual(raised.exception.name, "connectrpc")

    def test_generated_code_keeps_the_proto_package_under_the_clients_name(self) -> None:
        request = pb.DescribeRegistryRequest(registry_id=SETUP["account"])
        self.assertEqual(request.DESCRIPTOR.full_name, "ecr.registry.v1.DescribeRegistryRequest")
        self.assertEqual(type(request).__module__, "registry_gateway_client.v1.registry_pb2")
        # pickle imports the class by its module: the rewritten name must be importable.
        self.assertEqual(pickle.loads(pickle.dumps(request)), request)  # noqa: S301
        raw = resources.files("registry_gateway_client.v1").joinpath("registry_descriptor.binpb")
        files = descriptor_pb2.FileDescriptorSet.FromString(raw.read_bytes()).file
        self.assertIn("ecr/registry/v1/registry.proto", [f.name for f in files])


class AsyncClient(unittest.IsolatedAsyncioTestCase):
    """The asyncio client: every RPC but the history, typed errors, the update helper."""

    def connect(self, key: str | None = None) -> client.RegistryConfigClient:
        return client.RegistryConfigClient(SETUP["target"], api_key=key or SETUP["key"])

    async def test_whole_document_rpcs_and_call_info(self) -> None:
        async with self.connect() as gateway:
            info = client.CallInfo()
            described = await gateway.describe_registry(info=info)
            self.assertEqual(described.registry_id, SETUP["account"])
            self.assertIn(info.cache, {"hit", "miss"})
            self.assertTrue(info.request_id)
            put = await gateway.put_registry_policy(policy_text=SETUP["policy"])
            got = await gateway.get_registry_policy(no_cache=True)
            self.assertEqual(got.etag, put.etag)
            with self.assertRaises(client.EtagMismatch) as stale:
                await gateway.delete_registry_policy(etag="stale")
            self.assertEqual(stale.exception.current_etag, put.etag)
            await gateway.delete_registry_policy(etag=put.etag)
            with self.assertRaises(client.NotFound):
                await gateway.get_registry_policy()
            destination = {"region": "eu-west-1", "registryId": SETUP["account"]}
            rules = {"rules": [{"destinations": [destination], "repositoryFilters": []}]}
            written = await gateway.put_replication_configuration(
                replication_configuration=rules, etag=described.etag
            )
            self.assertEqual(len(written.replication_configuration.rules), 1)

    async def test_update_helper_reads_changes_and_writes_with_the_etag(self) -> None:
        partner = pb.ReplicationDestination(
            registry_id=SETUP["partner_account"], region="us-west-2"
        )

        def add_partner(config: pb.ReplicationConfiguration) -> None:
            if not config.rules:
                config.rules.add()
            if partner not in config.rules[0].destinations:
                config.rules[0].destinations.append(partner)

        async with self.connect() as gateway:
            updated = await gateway.update_replication_configuration(add_partner)
            self.assertIn(partner, updated.replication_configuration.rules[0].destinations)
            again = await gateway.update_replication_configuration(add_partner)
            self.assertEqual(again.etag, updated.etag)  # nothing changed: nothing written

    async def test_slice_rpcs(self) -> None:
        rule = {
            "destinations": [{"region": "eu-west-1", "registryId": SETUP["account"]}],
            "repositoryFilters": [{"filter": "payments/api", "filterType": "PREFIX_MATCH"}],
        }
        async with self.connect() as gateway:
            before = await gateway.get_replication_rules()
            written = await gateway.put_replication_rules(rules=[rule], etag=before.etag)
            mine = await gateway.get_replication_rules()
            self.assertEqual(mine.etag, written.etag)
            self.assertEqual([r.repository_filters[0].filter for r in mine.rules], ["payments/api"])
            await gateway.put_policy_statements(statements=[statement("PaymentsCompat")])
            got = await gateway.get_policy_statements()
            sids = [s["Sid"] for s in json.loads(got.statements_json)]
            self.assertEqual(sids, ["PaymentsCompat"])
            await gateway.put_policy_statements(statements=[], etag=got.etag)

    async def test_helpers_history_and_client_side_errors(self) -> None:
        async with self.connect() as gateway:
            added = await gateway.update_policy_statements(
                lambda s: [*s, statement("PaymentsHelper")]
            )
            self.assertIn("PaymentsHelper", added.statements_json)
            same = await gateway.update_policy_statements(lambda s: None)  # nothing changed
            self.assertEqual(same.etag, added.etag)
            await gateway.update_policy_statements(
                lambda s: [x for x in s if x["Sid"] != "PaymentsHelper"]
            )
            await gateway.update_replication_rules(lambda rules: None)
            versions = [v async for v in gateway.iter_configuration_history("policy", page_size=1)]
            self.assertGreaterEqual(len(versions), 2)
            with self.assertRaises(client.InvalidArgument) as typo:  # protobuf's ParseError
                await gateway.put_replication_rules(rules=[{"destination": []}])
            self.assertEqual(typo.exception.reason, "UNDECODABLE_REQUEST")
        with self.assertRaises(ImportError):  # no `connect` extra here
            client.RegistryConfigClient("http://127.0.0.1:1")

    async def test_rich_errors_become_typed_exceptions(self) -> None:
        async with self.connect() as gateway:
            with self.assertRaises(client.PermissionDenied) as denied:
                await gateway.describe_registry(registry_id=SETUP["other_account"])
            self.assertEqual(denied.exception.reason, "TARGET_NOT_ALLOWED")
            self.assertTrue(denied.exception.request_id)
            with self.assertRaises(client.InvalidArgument) as invalid:
                await gateway.put_registry_policy(policy_text="{not json")
            self.assertTrue(invalid.exception.field_violations)
        async with self.connect("not-a-key") as stranger:
            with self.assertRaises(client.Unauthenticated):
                await stranger.describe_registry()


class SyncClient(unittest.TestCase):
    """The blocking twin (grpc's sync channel)."""

    def test_reads_writes_and_errors(self) -> None:
        with client.SyncRegistryConfigClient(SETUP["target"], api_key=SETUP["key"]) as gateway:
            described = gateway.describe_registry()
            self.assertEqual(described.registry_id, SETUP["account"])
            put = gateway.put_policy_statements(statements=[statement("PaymentsSync")])
            with self.assertRaises(client.EtagMismatch):
                gateway.put_policy_statements(statements=[], etag="stale")
            gateway.put_policy_statements(statements=[], etag=put.etag)
            with self.assertRaises(client.PermissionDenied):
                gateway.describe_registry(registry_id=SETUP["other_account"])


if __name__ == "__main__":
    unittest.main()
