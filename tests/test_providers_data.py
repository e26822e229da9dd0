"""The data-repository providers (zenodo, figshare, hydroshare, dataverse, ckan) against fakes.

Expected values are those of BinderHub's own provider tests (binderhub/tests/
test_repoproviders.py), and expected image names were computed with BinderHub's
``_safe_build_slug`` and image-name formula from binderhub/builder.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from browser_support import browser, chromium_path, page, serve_app  # noqa: F401
from fakes.data_repos import FakeDataRepos
from fakes.git_daemon import free_port
from playwright.async_api import Page, expect
from pytest_aiohttp import AiohttpServer

from swarmbinder.config import Config, load_config
from swarmbinder.errors import ProviderUnavailable, RefNotFound, SpecError
from swarmbinder.handlers.pages import add_page_routes
from swarmbinder.naming import image_name
from swarmbinder.outbound import OutboundPolicy, guarded_session
from swarmbinder.providers import (
    CKANProvider,
    DataCache,
    HydroshareProvider,
    ProviderRegistry,
    RepoProvider,
    ZenodoProvider,
    default_registry,
)
from swarmbinder.resolve import policy_from_config, providers_from_config, resolve

PREFIX = "registry.example/binder-"
DATA_PREFIXES = ["zenodo", "figshare", "hydroshare", "dataverse", "ckan"]
HS_ID = "142c59757ed54de1816777828c9716e7"
HS_DOI_ID = "b8f6eae9d89241cf8b5904033460af61"
TURTLES = "binder-example-sea-turtle-sightings-in-taiwan"
ACTIVITY = "93df7fd0-0edc-4ebf-bac7-fbf5f78de90b"
#: The fakes listen on 127.0.0.1, which providers refuse unless allowed.
LOOPBACK = OutboundPolicy.from_cidrs(["127.0.0.0/8"])

# the dataset of BinderHub's recorded answer (http-record.dataverse.harvard.edu.json), trimmed
TJCLKP = {
    "id": 3035124,
    "identifier": "DVN/TJCLKP",
    "persistentUrl": "https://doi.org/10.7910/DVN/TJCLKP",
    "protocol": "doi",
    "authority": "10.7910",
    "publisher": "Harvard Dataverse",
    "latestVersion": {"versionNumber": 4, "versionMinorNumber": 0, "versionState": "RELEASED"},
}


@dataclass
class Data:
    fake: FakeDataRepos
    url: str
    session: aiohttp.ClientSession
    registry: ProviderRegistry

    def get(self, prefix: str, spec: str) -> RepoProvider:
        return self.registry.get(prefix, spec)


def seeded_fake() -> FakeDataRepos:
    fake = FakeDataRepos()
    # Zenodo: a concept DOI leads (through Zenodo's own redirect) to its latest version
    fake.dois["10.5281/zenodo.3242074"] = "/records/3242074"
    fake.dois["10.5281/zenodo.3242073"] = "/records/3242074"
    fake.dois["10.6084/m9.figshare.9782777.v1"] = "/articles/9782777/1"
    fake.dois["10.6084/m9.figshare.9782777"] = "/articles/9782777"
    fake.dois["10.6084/m9.figshare.1111.v1"] = "/articles/1111/1"
    fake.dois["10.6084/m9.figshare.2222"] = "/articles/2222"
    fake.figshare_versions = {"9782777": [1, 3, 2], "2222": []}
    fake.dois["10.7910/DVN/TJCLKP"] = "/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP"
    fake.dois["10.7910/DVN/FILE01/ABC"] = "/file.xhtml?persistentId=doi:10.7910/DVN/FILE01/ABC"
    fake.dois["10.7910/DVN/DRAFT1"] = "/dataset.xhtml?persistentId=doi:10.7910/DVN/DRAFT1"
    fake.dataverse["doi:10.7910/DVN/TJCLKP"] = TJCLKP
    fake.dataverse["doi:10.7910/DVN/DRAFT1"] = {
        **TJCLKP,
        "identifier": "DVN/DRAFT1",
        "latestVersion": {"versionState": "DRAFT"},
    }
    fake.hydroshare_modified = {
        HS_ID: "2019-07-16T13:00:16.123456Z",
        HS_DOI_ID: "2020-02-29T23:59:59Z",
    }
    fake.hydroshare_private = {"0" * 32}
    fake.ckan = {
        "": {"my-sample-dataset-001": "2023-05-01T10:00:00.5"},
        "/data": {TURTLES: "2020-01-01T00:00:00.000001", ACTIVITY: "2024-04-02T02:10:31.123456"},
    }
    return fake


@pytest.fixture
async def data(aiohttp_server: AiohttpServer) -> AsyncIterator[Data]:
    fake = seeded_fake()
    server = await aiohttp_server(fake.app())
    url = str(server.make_url("")).rstrip("/")
    async with guarded_session(LOOPBACK) as session:
        registry = default_registry(
            session,
            zenodo_doi_resolver_url=f"{url}/doi",
            figshare_doi_resolver_url=f"{url}/doi",
            figshare_api_base_url=f"{url}/v2",
            dataverse_doi_resolver_url=f"{url}/doi",
            hydroshare_base_url=url,
            data_cache=DataCache(),
        )
        yield Data(fake, url, session, registry)


async def outcome(provider: RepoProvider) -> dict[str, str]:
    ref = await provider.get_resolved_ref()
    return {
        "ref": ref,
        "slug": provider.get_build_slug(),
        "repo_url": provider.get_repo_url(),
        "ref_url": await provider.get_resolved_ref_url(),
        "resolved_spec": await provider.get_resolved_spec(),
        "image": image_name(PREFIX, provider.get_build_slug(), ref),
    }


# -- what the service offers -------------------------------------------------------------------


async def test_registry_offers_binderhubs_data_providers() -> None:
    async with guarded_session(LOOPBACK) as session:
        registry = default_registry(session)
    assert registry.prefixes[-5:] == DATA_PREFIXES
    configs = {str(c["id"]): c for c in registry.display_configs()}
    expected_names = {
        "zenodo": "Zenodo DOI",
        "figshare": "FigShare DOI",
        "hydroshare": "Hydroshare resource",
        "dataverse": "Dataverse DOI",
        "ckan": "CKAN dataset",
    }
    for prefix, display_name in expected_names.items():
        config = configs[prefix]
        assert config["displayName"] == display_name
        # no git ref to type: the form disables its ref field for these
        assert config["ref"] == {"enabled": False}
        assert registry.labels()[prefix]["ref_prop_disabled"] is True
    assert configs["ckan"]["repo"] == {
        "label": "CKAN dataset URL",
        "placeholder": "https://demo.ckan.org/dataset/my-sample-dataset-001",
        "urlEncode": True,
    }


@pytest.mark.parametrize(
    ("prefix", "spec", "words"),
    [
        ("zenodo", "zenodo.3242074", "must be a DOI"),
        ("zenodo", "10.5281/", "must be a DOI"),
        ("zenodo", "10.5281/zenodo 3242074", "must be a DOI"),
        ("figshare", "10.6084/m9.figshare.abc", "article id"),
        ("figshare", "10.6084/9782777", "article id"),
        ("figshare", "10.6084/m9.figshare.9782777.vX", "version must be"),
        ("dataverse", "DVN/TJCLKP", "must be a DOI"),
        ("hydroshare", "not-a-resource", "was not recognized"),
        ("hydroshare", "142c59757ed54de1816777828c9716e", "was not recognized"),
        ("ckan", "https%3A%2F%2Fdemo.ckan.org%2Fgroup%2Froger", "dataset URL"),
        ("ckan", "ftp%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fx", "http(s) dataset URL"),
        ("ckan", "https%3A%2F%2Fdemo.ckan.org%2Fdataset%2F", "dataset URL"),
        ("ckan", "https%3A%2F%2F%5Bbad%2Fdataset%2Fx", "does not parse"),
        ("ckan", "https%3A%2F%2Fd.org%2Fdataset%2Fx%0A", "control characters"),
        ("ckan", "https%3A%2F%2Fd.org%2Fdataset%2Fx%3Factivity_id%3D..%2Fy", "not a CKAN id"),
    ],
)
async def test_malformed_specs_are_refused_before_any_request(
    prefix: str, spec: str, words: str
) -> None:
    async with guarded_session(LOOPBACK) as session:
        registry = default_registry(session, zenodo_doi_resolver_url="http://127.0.0.1:9")
        with pytest.raises(SpecError) as info:
            registry.get(prefix, spec)
    assert words in str(info.value)
    assert not isinstance(info.value, RefNotFound)


async def test_slug_needs_a_resolved_ref() -> None:
    provider = ZenodoProvider("10.5281/zenodo.3242074")
    with pytest.raises(RuntimeError, match="resolve"):
        provider.get_build_slug()
    await provider.aclose()


# -- Zenodo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["10.5281/zenodo.3242074", "10.5281/zenodo.3242073"])
async def test_zenodo(data: Data, spec: str) -> None:
    assert await outcome(data.get("zenodo", spec)) == {
        "ref": "3242074",
        "slug": "zenodo-3242074",
        "repo_url": spec,  # repo2docker resolves the DOI itself
        "ref_url": "https://doi.org/10.5281/zenodo.3242074",
        "resolved_spec": "10.5281/zenodo.3242074",
        "image": "registry.example/binder-zenodo-2d3242074-b993d2:3242074",
    }
    assert data.fake.paths() == [f"/doi/{spec}", "/records/3242074"]


async def test_zenodo_unknown_doi_is_not_found_and_remembered(data: Data) -> None:
    for _ in range(2):
        with pytest.raises(RefNotFound, match=r"DOI 10\.5281/zenodo\.1 was not found"):
            await data.get("zenodo", "10.5281/zenodo.1").get_resolved_ref()
    assert data.fake.paths() == ["/doi/10.5281/zenodo.1"]


async def test_zenodo_doi_leading_nowhere_useful(data: Data) -> None:
    data.fake.dois["10.5281/zenodo.5"] = "/records/a%20b"
    with pytest.raises(ProviderUnavailable) as info:
        await data.get("zenodo", "10.5281/zenodo.5").get_resolved_ref()
    assert info.value.user_message == "Zenodo gave an unexpected answer. Try again later."


async def test_doi_resolver_unreachable_is_unavailable() -> None:
    provider = ZenodoProvider(
        "10.5281/zenodo.3242074",
        doi_resolver_url=f"http://127.0.0.1:{free_port()}",
        outbound=LOOPBACK,
    )
    async with provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.get_resolved_ref()
    assert info.value.user_message == (
        "Could not resolve the DOI 10.5281/zenodo.3242074. Try again later."
    )


# -- Figshare ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ref", "image"),
    [
        (
            "10.6084/m9.figshare.9782777.v1",
            "9782777.v1",
            "registry.example/binder-figshare-2d9782777-2ev1-14e969:9782777.v1",
        ),
        (
            "10.6084/m9.figshare.9782777",
            "9782777.v3",
            "registry.example/binder-figshare-2d9782777-2ev3-cf7eea:9782777.v3",
        ),
    ],
)
async def test_figshare(data: Data, spec: str, ref: str, image: str) -> None:
    result = await outcome(data.get("figshare", spec))
    assert result["ref"] == ref
    assert result["slug"] == f"figshare-{ref}"
    assert result["repo_url"] == spec
    assert result["resolved_spec"] == f"10.6084/m9.figshare.{ref}"
    assert result["ref_url"] == f"https://doi.org/10.6084/m9.figshare.{ref}"
    assert result["image"] == image
    # only an unversioned DOI needs the versions list
    asked_api = "/v2/articles/9782777/versions" in data.fake.paths()
    assert asked_api == (not spec.endswith(".v1"))


async def test_figshare_versions_are_reused_while_the_etag_holds(data: Data) -> None:
    for _ in range(2):
        provider = data.get("figshare", "10.6084/m9.figshare.9782777")
        assert await provider.get_resolved_ref() == "9782777.v3"
    api = [s for s in data.fake.requests if s.path_qs.startswith("/v2/")]
    assert [s.status for s in api] == [200, 304]
    assert "If-None-Match" in api[1].headers

    data.fake.figshare_versions["9782777"].append(4)
    provider = data.get("figshare", "10.6084/m9.figshare.9782777")
    assert await provider.get_resolved_ref() == "9782777.v4"


async def test_figshare_article_without_versions_or_api_record(data: Data) -> None:
    with pytest.raises(RefNotFound, match="has no versions"):
        await data.get("figshare", "10.6084/m9.figshare.2222").get_resolved_ref()
    data.fake.dois["10.6084/m9.figshare.3333"] = "/articles/3333"
    with pytest.raises(RefNotFound, match="Could not resolve ref for figshare:"):
        await data.get("figshare", "10.6084/m9.figshare.3333").get_resolved_ref()


async def test_figshare_versioned_doi_that_does_not_exist(data: Data) -> None:
    with pytest.raises(RefNotFound, match="was not found"):
        await data.get("figshare", "10.6084/m9.figshare.9782777.v9").get_resolved_ref()


async def test_doi_leading_to_a_page_that_is_gone(data: Data) -> None:
    data.fake.dois["10.6084/m9.figshare.4444.v1"] = "/articles/4444/1/gone"
    with pytest.raises(RefNotFound) as info:
        await data.get("figshare", "10.6084/m9.figshare.4444.v1").get_resolved_ref()
    assert str(info.value) == (
        f"DOI 10.6084/m9.figshare.4444.v1 leads to {data.url}/articles/4444/1/gone, "
        "which answered 404: the record may have been removed or made private."
    )


async def test_figshare_rate_limit_says_when_to_come_back(data: Data) -> None:
    data.fake.fail_with = 429
    with pytest.raises(ProviderUnavailable) as info:
        await data.get("figshare", "10.6084/m9.figshare.9782777").get_resolved_ref()
    assert info.value.user_message == "Figshare rate limit exceeded. Try again in 2 minutes."


# -- Dataverse ---------------------------------------------------------------------------------


async def test_dataverse(data: Data) -> None:
    assert await outcome(data.get("dataverse", "10.7910/DVN/TJCLKP")) == {
        "ref": "3035124.v4.0",
        "slug": "dataverse-dvn-2ftjclkp",
        "repo_url": "10.7910/DVN/TJCLKP",
        "ref_url": "https://doi.org/10.7910/DVN/TJCLKP",
        "resolved_spec": "10.7910/DVN/TJCLKP",
        "image": "registry.example/binder-dataverse-2ddvn-2d2ftjclkp-a1371f:3035124.v4.0",
    }
    api_calls = [p for p in data.fake.paths() if p.startswith("/api/")]
    assert api_calls == ["/api/datasets/:persistentId?persistentId=doi:10.7910/DVN/TJCLKP"]


async def test_dataverse_file_doi_and_draft_dataset(data: Data) -> None:
    with pytest.raises(RefNotFound, match="a file's DOI will not do"):
        await data.get("dataverse", "10.7910/DVN/FILE01/ABC").get_resolved_ref()
    with pytest.raises(RefNotFound, match="has no published version"):
        await data.get("dataverse", "10.7910/DVN/DRAFT1").get_resolved_ref()


async def test_dataverse_installation_failing_is_unavailable(data: Data) -> None:
    data.fake.fail_with = 502
    with pytest.raises(ProviderUnavailable) as info:
        await data.get("dataverse", "10.7910/DVN/TJCLKP").get_resolved_ref()
    assert info.value.user_message == "Dataverse answered 502. Try again later."


# -- HydroShare --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "resource", "version"),
    [
        (f"https://www.hydroshare.org/resource/{HS_ID}", HS_ID, "1563282016"),
        (quote(f"https://www.hydroshare.org/resource/{HS_ID}/", safe=""), HS_ID, "1563282016"),
        (HS_ID, HS_ID, "1563282016"),
        (f"10.4211/hs.{HS_DOI_ID}", HS_DOI_ID, "1583020799"),
    ],
)
async def test_hydroshare(data: Data, spec: str, resource: str, version: str) -> None:
    result = await outcome(data.get("hydroshare", spec))
    # the fake stands in for www.hydroshare.org, so the repo URL is on its address
    repo_url = f"{data.url}/resource/{resource}"
    assert result["ref"] == f"{resource}.v{version}"
    assert result["slug"] == f"hydroshare-{resource}.v{version}"
    assert result["repo_url"] == result["ref_url"] == result["resolved_spec"] == repo_url


async def test_hydroshare_image_name_and_default_site() -> None:
    provider = HydroshareProvider(f"https://www.hydroshare.org/resource/{HS_ID}")
    assert provider.get_repo_url() == f"https://www.hydroshare.org/resource/{HS_ID}"
    slug = f"hydroshare-{HS_ID}.v1563282016"
    assert image_name(PREFIX, slug, f"{HS_ID}.v1563282016") == (
        f"registry.example/binder-hydroshare-2d{HS_ID}-2ev1563282016-ca81d4:{HS_ID}.v1563282016"
    )


async def test_hydroshare_private_and_missing_resources(data: Data) -> None:
    with pytest.raises(RefNotFound, match="it is not public"):
        await data.get("hydroshare", "0" * 32).get_resolved_ref()
    with pytest.raises(RefNotFound, match="Could not resolve ref"):
        await data.get("hydroshare", "f" * 32).get_resolved_ref()


# -- CKAN --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ref"),
    [
        ("/dataset/my-sample-dataset-001", "my-sample-dataset-001.v1682935200"),
        (f"/data/dataset/{TURTLES}", f"{TURTLES}.v1577836800"),
        (f"/data/dataset/{TURTLES}/?activity_id={ACTIVITY}", f"{TURTLES}.v1712023831"),
        (f"/data/dataset/{TURTLES}/history/{ACTIVITY}", f"{TURTLES}.v1712023831"),
    ],
)
async def test_ckan(data: Data, path: str, ref: str) -> None:
    dataset_url = f"{data.url}{path}"
    result = await outcome(data.get("ckan", quote(dataset_url, safe="")))
    assert result["ref"] == ref
    assert result["slug"] == f"ckan-{ref.split('.v')[0]}"
    assert result["repo_url"] == result["ref_url"] == result["resolved_spec"] == dataset_url
    last = data.fake.paths()[-1]
    if ACTIVITY in path:
        assert last == f"/data/api/3/action/activity_data_show?id={ACTIVITY}&object_type=package"
    else:
        assert "/api/3/action/package_show?id=" in last


def test_ckan_image_name_matches_binderhub() -> None:
    url = f"https://data.depositar.io/dataset/{TURTLES}/history/{ACTIVITY}"
    provider = CKANProvider(quote(url, safe=""))
    assert provider.get_repo_url() == url
    assert provider.api_url == (
        "https://data.depositar.io/api/3/action/activity_data_show?"
        f"id={ACTIVITY}&object_type=package"
    )
    assert image_name(PREFIX, f"ckan-{TURTLES}", f"{TURTLES}.v1712023831") == (
        "registry.example/binder-ckan-2dbinder-2dexample-2dsea-2dturtle-2dsightings-2din-2dtaiwan"
        f"-51ef22:{TURTLES}.v1712023831"
    )


async def test_ckan_missing_dataset(data: Data) -> None:
    spec = quote(f"{data.url}/dataset/nosuchdataset", safe="")
    with pytest.raises(RefNotFound, match="Could not resolve ref for ckan:"):
        await data.get("ckan", spec).get_resolved_ref()


# -- through the service's resolve() and the CLI ---------------------------------------------


async def test_resolve_a_zenodo_launch_path(data: Data) -> None:
    config = load_config(env={})
    resolved = await resolve(
        "zenodo/10.5281/zenodo.3242073/",
        providers=data.registry,
        policy=policy_from_config(config),
        image_prefix=PREFIX,
    )
    assert resolved.build.provider == "zenodo"
    assert resolved.build.spec == "10.5281/zenodo.3242073"
    assert resolved.build.repo_url == "10.5281/zenodo.3242073"
    assert resolved.build.image == "registry.example/binder-zenodo-2d3242074-b993d2:3242074"
    assert resolved.resolved_spec == "10.5281/zenodo.3242074"
    assert resolved.ref_url == "https://doi.org/10.5281/zenodo.3242074"


async def test_config_points_the_providers_at_other_services(data: Data) -> None:
    config = load_config(
        env={
            "SWARMBINDER_FIGSHARE_DOI_RESOLVER_URL": f"{data.url}/doi",
            "SWARMBINDER_FIGSHARE_API_BASE_URL": f"{data.url}/v2",
            "SWARMBINDER_HYDROSHARE_BASE_URL": data.url,
            "SWARMBINDER_DATAVERSE_DOI_RESOLVER_URL": f"{data.url}/doi",
        }
    )
    registry = providers_from_config(config, data.session)
    figshare = registry.get("figshare", "10.6084/m9.figshare.9782777")
    assert await figshare.get_resolved_ref() == "9782777.v3"
    assert await registry.get("hydroshare", HS_ID).get_resolved_ref() == f"{HS_ID}.v1563282016"
    dataverse = registry.get("dataverse", "10.7910/DVN/TJCLKP")
    assert await dataverse.get_resolved_ref() == "3035124.v4.0"


async def test_build_dry_run_of_a_zenodo_doi(aiohttp_server: AiohttpServer) -> None:
    fake = seeded_fake()
    server = await aiohttp_server(fake.app())
    env = {
        **os.environ,
        "SWARMBINDER_ZENODO_DOI_RESOLVER_URL": str(server.make_url("/doi")),
        "SWARMBINDER_IMAGE_PREFIX": PREFIX,
        "SWARMBINDER_ALLOWED_OUTBOUND_NETWORKS": "[127.0.0.0/8]",
        "DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}",
    }
    env.pop("SWARMBINDER_CONFIG", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "swarmbinder",
        "build",
        "--dry-run",
        "--json",
        "zenodo/10.5281/zenodo.3242073",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    plan: dict[str, Any] = json.loads(stdout)
    assert plan["provider"] == "zenodo"
    assert plan["repo_url"] == "10.5281/zenodo.3242073"
    assert plan["resolved_ref"] == "3242074"
    assert plan["image"] == "registry.example/binder-zenodo-2d3242074-b993d2:3242074"
    assert fake.paths()[0] == "/doi/10.5281/zenodo.3242073"


@pytest.mark.swarm
async def test_home_page_form_makes_binderhubs_links(page: Page) -> None:  # noqa: F811
    app = web.Application()
    add_page_routes(app, Config())
    async with serve_app(app) as base:
        await page.goto(base)
        launch_url = page.locator("#launch-url")
        await page.select_option("#provider", "zenodo")
        # no git ref for a DOI: the field is off and the link has none (BinderHub's form)
        await expect(page.locator("#ref")).to_be_disabled()
        await page.fill("#repository", "10.5281/zenodo.3242074")
        await expect(launch_url).to_have_text(f"{base}v2/zenodo/10.5281/zenodo.3242074/")

        await page.select_option("#provider", "ckan")
        dataset = "https://demo.ckan.org/dataset/my-sample-dataset-001"
        await page.fill("#repository", dataset)
        escaped = quote(dataset, safe="")
        await expect(launch_url).to_have_text(f"{base}v2/ckan/{escaped}/")
        await page.click("#launch")
        await page.wait_for_url(f"{base}v2/ckan/{escaped}/")
        # the loading page shows the dataset URL decoded, as it was typed
        await expect(page.locator("#spec")).to_have_text(dataset)
