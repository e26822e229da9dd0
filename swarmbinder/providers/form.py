"""How a provider describes itself to the home page's launch form, in BinderHub's shapes.

Two shapes, both read by BinderHub's JavaScript: the labels of ``/_config`` (older forms) and
the entry of ``/api/repoproviders`` (the current form). Every provider declares both in one
:func:`launch_form` call, so the git and the data providers cannot drift apart in how a field
is spelled or ordered, and one provider's two entries cannot disagree on its ref field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

GIT_REF_TEXT = "Git ref (branch, tag, or commit)"


class LaunchForm(NamedTuple):
    """A provider's two entries, its class attributes ``labels`` and ``display_config``."""

    #: ``/_config``'s labels: the repository field's text and whether the ref field is used.
    labels: Mapping[str, object]
    #: ``/api/repoproviders``' entry: the spec check, the repository field and the ref field.
    display_config: Mapping[str, object]


def launch_form(
    provider_id: str,
    display_name: str,
    *,
    label: str,
    placeholder: str,
    validate_regex: str,
    text: str | None = None,
    tag_text: str = GIT_REF_TEXT,
    url_encode: bool = False,
    detect_regex: str | None = None,
    has_ref: bool = True,
) -> LaunchForm:
    """Both entries of one provider. ``text``, the older form's repository field text, is
    ``label`` unless given.

    A data repository has no ref the user could type, so its ref and label fields are off.
    ``detect_regex`` lets the form take a pasted URL of the provider's host; a provider with a
    ref field offers ``HEAD`` as its default.
    """
    labels = {
        "text": label if text is None else text,
        "tag_text": tag_text,
        "ref_prop_disabled": not has_ref,
        "label_prop_disabled": not has_ref,
    }
    entry: dict[str, object] = {
        "displayName": display_name,
        "id": provider_id,
        "spec": {"validateRegex": validate_regex},
    }
    if detect_regex is not None:
        entry["detect"] = {"regex": detect_regex}
    entry["repo"] = {"label": label, "placeholder": placeholder, "urlEncode": url_encode}
    entry["ref"] = {"enabled": True, "default": "HEAD"} if has_ref else {"enabled": False}
    return LaunchForm(labels, entry)
