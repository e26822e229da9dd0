"""How a provider describes itself to the home page's launch form, in BinderHub's shapes.

Two shapes, both read by BinderHub's JavaScript: the labels of ``/_config`` (older forms) and
the entry of ``/api/repoproviders`` (the current form). Every provider builds both here, so
the git and the data providers cannot drift apart in how a field is spelled or ordered.
"""

from __future__ import annotations

from collections.abc import Mapping

GIT_REF_TEXT = "Git ref (branch, tag, or commit)"


def form_labels(
    text: str, *, tag_text: str = GIT_REF_TEXT, has_ref: bool = True
) -> Mapping[str, object]:
    """``/_config``'s labels: the repository field's text and whether the ref field is used.

    A data repository has no ref the user could type, so its ref and label fields are off.
    """
    return {
        "text": text,
        "tag_text": tag_text,
        "ref_prop_disabled": not has_ref,
        "label_prop_disabled": not has_ref,
    }


def form_display_config(
    provider_id: str,
    display_name: str,
    *,
    label: str,
    placeholder: str,
    validate_regex: str,
    url_encode: bool = False,
    detect_regex: str | None = None,
    has_ref: bool = True,
) -> Mapping[str, object]:
    """``/api/repoproviders``' entry: the spec check, the repository field and the ref field.

    ``detect_regex`` lets the form take a pasted URL of the provider's host; a provider with a
    ref field offers ``HEAD`` as its default.
    """
    entry: dict[str, object] = {
        "displayName": display_name,
        "id": provider_id,
        "spec": {"validateRegex": validate_regex},
    }
    if detect_regex is not None:
        entry["detect"] = {"regex": detect_regex}
    entry["repo"] = {"label": label, "placeholder": placeholder, "urlEncode": url_encode}
    entry["ref"] = {"enabled": True, "default": "HEAD"} if has_ref else {"enabled": False}
    return entry
