from __future__ import annotations

import random
import re
import string

import pytest

from swarmbinder import naming

OCTAVE_REF = "1479e0252b2e648bb755ee913292b79495931717"
SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")


def sample_slugs(count: int, seed: int = 7) -> list[str]:
    """Slugs of every shape a provider can hand us: short, long, odd characters, non-ASCII."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_./%:@~ éü日"
    slugs = ["", "-", "_", "a", "binder-examples-octave", "x" * 300, "Ünïcode/Repo_", "-" * 80]
    while len(slugs) < count:
        slugs.append("".join(rng.choices(alphabet, k=rng.randint(1, 120))))
    return slugs


def sample_refs(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(160):040x}" for _ in range(count)] + ["HEAD", "v1.0", "a/b_c"]


# -- image names ---------------------------------------------------------------------------


def test_image_name_matches_binderhub_for_github_slug() -> None:
    # gh/binder-examples/octave: BinderHub's GitHub build slug is "{user}-{repo}"
    name = naming.image_name("", "binder-examples-octave", OCTAVE_REF)
    assert name == f"binder-2dexamples-2doctave-03025a:{OCTAVE_REF}"


def test_image_name_keeps_the_prefix() -> None:
    name = naming.image_name("registry.local:5000/binder-", "binder-examples-octave", OCTAVE_REF)
    assert name == f"registry.local:5000/binder-binder-2dexamples-2doctave-03025a:{OCTAVE_REF}"


def test_image_name_lowercases_and_replaces_underscores_everywhere() -> None:
    name = naming.image_name("Reg/My_Prefix-", "User-Repo", "ABC_def")
    repository, tag = naming.split_image_name(name)
    assert tag == "abc-def"
    assert repository.startswith("reg/my-prefix-user-2drepo-")
    assert name == name.lower() and "_" not in name


def test_safe_build_slug_known_values() -> None:
    assert naming.safe_build_slug("a", limit=255) == "a-ca9781"
    assert (
        naming.safe_build_slug("my_repo_", limit=255)
        == "my-5frepo-5f-" + (naming._sha256("my_repo_")[:6])
    )
    assert (
        naming.safe_build_slug("x" * 300, limit=20)
        == "x" * 13 + "-" + naming._sha256("x" * 300)[:6]
    )


def test_safe_build_slug_rejects_a_limit_without_room() -> None:
    with pytest.raises(ValueError):
        naming.safe_build_slug("abc", limit=7)


def test_image_repository_stays_within_255_and_valid() -> None:
    prefix = "registry.example.org:5000/some/project/binder-"
    # the Docker distribution grammar for one path component
    component = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
    seen: dict[str, str] = {}
    for slug in sample_slugs(500):
        name = naming.image_name(prefix, slug, OCTAVE_REF)
        repository, tag = naming.split_image_name(name)
        assert tag == OCTAVE_REF
        assert len(repository) <= naming.MAX_IMAGE_NAME_LENGTH
        assert component.fullmatch(repository.rsplit("/", 1)[1]), slug
        assert seen.setdefault(repository, slug) == slug, "two slugs share an image"


def test_split_image_name() -> None:
    assert naming.split_image_name("localhost:5000/a/b:tag") == ("localhost:5000/a/b", "tag")
    assert naming.split_image_name("localhost:5000/a/b") == ("localhost:5000/a/b", "latest")
    assert naming.split_image_name("b:1") == ("b", "1")


# -- build service names -------------------------------------------------------------------


def test_build_service_name_known_value() -> None:
    name = naming.build_service_name("binder-examples-octave", OCTAVE_REF)
    digest = naming._sha256(f"binder-examples-octave\n{OCTAVE_REF}")[:12]
    assert name == f"swarmbinder-build-binder-examples-octave-1479e02-{digest}"


def test_build_service_name_is_deterministic() -> None:
    assert naming.build_service_name("u-r", OCTAVE_REF) == naming.build_service_name(
        "u-r", OCTAVE_REF
    )


def test_build_service_names_are_valid_and_distinct() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for slug in sample_slugs(300):
        for ref in sample_refs(5, seed=len(slug)):
            name = naming.build_service_name(slug, ref)
            assert len(name) <= naming.MAX_SERVICE_NAME_LENGTH, name
            assert SERVICE_NAME.fullmatch(name), name
            assert name.startswith(naming.BUILD_SERVICE_PREFIX)
            assert seen.setdefault(name, (slug, ref)) == (slug, ref), "collision"


def test_build_service_name_long_slugs_sharing_a_head_differ() -> None:
    head = "a" * 100
    assert naming.build_service_name(head + "1", OCTAVE_REF) != naming.build_service_name(
        head + "2", OCTAVE_REF
    )


def test_build_service_name_same_slug_different_ref_differ() -> None:
    # refs sharing the readable 7-character head still differ by the hash
    a = naming.build_service_name("u-r", OCTAVE_REF)
    b = naming.build_service_name("u-r", OCTAVE_REF[:7] + "0" * 33)
    assert a != b


def test_build_service_name_custom_prefix() -> None:
    name = naming.build_service_name("u-r", OCTAVE_REF, prefix="mybinder-build-")
    assert name.startswith("mybinder-build-u-r-1479e02-")
    with pytest.raises(ValueError):
        naming.build_service_name("u-r", OCTAVE_REF, prefix="Bad_")
    with pytest.raises(ValueError):
        naming.build_service_name("u-r", OCTAVE_REF, prefix="x" * 50)


# -- temporary user names ------------------------------------------------------------------


def test_spawner_service_name_matches_swarmspawner() -> None:
    assert naming.spawner_service_name("minrk-binder-abc") == "jupyter-minrk-2dbinder-2dabc"
    assert naming.spawner_service_name("Ann", "My-Server") == "jupyter--41nn--my-2dserver"


def test_temporary_name_shape() -> None:
    rng = random.Random(1)
    name = naming.temporary_name("https://github.com/minrk/binder-example.git", rng=rng)
    stem, suffix = name.rsplit("-", 1)
    assert stem == "minrk-binder-example"
    assert re.fullmatch(r"[a-z0-9]{8}", suffix)


def test_temporary_name_of_ssh_and_odd_urls() -> None:
    rng = random.Random(2)
    assert naming.temporary_name("git@gitlab.com:group/Sub/proj.git", rng=rng).startswith(
        "group-sub-proj-"
    )
    assert naming.temporary_name("10.5281/zenodo.3242074", rng=rng).startswith(
        "10-5281-zenodo-3242074-"
    )
    assert naming.temporary_name("https://example.org/", rng=rng).startswith("binder-")


def test_temporary_names_are_random() -> None:
    names = {naming.temporary_name("https://github.com/u/r") for _ in range(200)}
    assert len(names) == 200


def test_temporary_name_keeps_head_and_tail_of_long_repos() -> None:
    url = "https://gitlab.com/" + "/".join(["group"] * 10) + "/the-project"
    name = naming.temporary_name(url, rng=random.Random(3))
    assert name.startswith("group-")
    assert name[: -naming.TEMP_SUFFIX_LENGTH - 1].endswith("the-project")
    assert len(naming.spawner_service_name(name)) <= naming.MAX_SERVICE_NAME_LENGTH


def test_temporary_user_service_names_fit_swarm() -> None:
    rng = random.Random(4)
    for slug in sample_slugs(400):
        url = f"https://github.com/{slug}"
        name = naming.temporary_name(url, rng=rng)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
        service = naming.spawner_service_name(name)
        assert len(service) <= naming.MAX_SERVICE_NAME_LENGTH, (url, service)
        assert SERVICE_NAME.fullmatch(service)


def test_temporary_server_names_fit_next_to_a_user() -> None:
    rng = random.Random(5)
    for user in ["a", "Some.User@example.org", "x" * 30]:
        budget = naming.temporary_name_budget(user)
        for slug in sample_slugs(100, seed=len(user)):
            server = naming.temporary_name(f"https://h/{slug}", budget=budget, rng=rng)
            service = naming.spawner_service_name(user, server)
            assert len(service) <= naming.MAX_SERVICE_NAME_LENGTH, service


def test_temporary_name_refuses_an_impossible_budget() -> None:
    with pytest.raises(ValueError):
        naming.temporary_name("https://h/u/r", budget=11)
    assert naming.temporary_name("https://h/u/r", budget=12, rng=random.Random(0))
