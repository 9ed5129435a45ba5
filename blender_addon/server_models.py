"""What a server offers: its models, LoRAs and IP-Adapters (``GET /v1/models``), the checks
of a request's names against them, and the last list seen (:data:`CATALOG`, which the
panel's dropdowns show).

The answer's layout::

    {"default": "sd15-base",
     "models": [{"name", "family", "source", "controlnets", "loaded", "bytes"}, ...],
     "loras": [{"name", "family"}, ...], "ip_adapters": [{"name", "family"}, ...]}

Missing keys are tolerated: an older server answers only ``{"models": [{"name",
"controlnet", ...}]}``; a list the server did not give is None here and nothing is checked
against it, and an entry without a family is never called the wrong family. Plain
Python: the panel draws from here and the flow checks with it before any capture.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import ProtocolError, protocol

FAMILY_TITLES = {"sd15": "SD 1.5", "sdxl": "SDXL"}
SHOWN_NAMES = 8  # names an error message lists before "..."
REFRESH_HINT = "press Connect in the ZS panel to refresh the list"
LORA_SUFFIX = ".safetensors"


def family_title(family: str) -> str:
    """"sdxl" -> "SDXL"; an unknown family as it is; "" -> "unknown family"."""
    return FAMILY_TITLES.get(family, family) or "unknown family"


@dataclass(frozen=True)
class Offer:
    """One model, LoRA or IP-Adapter the server can load. ``family`` is "" when the
    server did not say; ``detail`` is a line for the panel (ControlNets, loaded, size)."""

    name: str
    family: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Catalog:
    """A server's lists (None: the server did not give that list) and its default model."""

    url: str = ""
    default: str = ""
    models: tuple[Offer, ...] | None = None
    loras: tuple[Offer, ...] | None = None
    ip_adapters: tuple[Offer, ...] | None = None

    @classmethod
    def from_answer(cls, answer, url: str = "", default: str = "") -> "Catalog":
        """``GET /v1/models``'s JSON -> a Catalog; ``default`` (e.g. /v1/health's model)
        stands in when the answer names none."""
        answer = answer if isinstance(answer, dict) else {}
        return cls(url=url, default=str(answer.get("default") or default or ""),
                   models=_offers(answer.get("models"), _model_detail),
                   loras=_offers(answer.get("loras")), ip_adapters=_offers(answer.get("ip_adapters")))

    # ----------------------------------------------------------------- lookups

    def model(self, name: str) -> Offer | None:
        """The model ``name`` ("" : the server's default), or None when not listed."""
        return _find(self.models, name or self.default)

    def model_family(self, name: str) -> str:
        """The family of model ``name`` ("": the default); "" when unknown."""
        offer = self.model(name)
        return offer.family if offer is not None else ""

    def lora(self, name: str) -> Offer | None:
        """LoRA ``name``; a file's name may leave out its ``.safetensors``, as on the server."""
        return _find(self.loras, name) or _find(self.loras, name + LORA_SUFFIX)

    def ip_adapter(self, name: str) -> Offer | None:
        return _find(self.ip_adapters, name)

    # ------------------------------------------------------------------ checks

    def lora_problem(self, name: str, model: str) -> str:
        """Why LoRA ``name`` cannot go on ``model`` ("" when it can, or nothing is known)."""
        return self._problem("LoRA", self.loras, self.lora(name), name, model)

    def ip_adapter_problem(self, name: str, model: str) -> str:
        """Why IP-Adapter ``name`` ("": the family's default, always fine) cannot go on
        ``model`` ("" when it can)."""
        if not name:
            return ""
        return self._problem("IP-Adapter", self.ip_adapters, self.ip_adapter(name), name, model)

    def model_problem(self, name: str) -> str:
        """Why the server cannot load model ``name`` ("": the default, always fine)."""
        if not name or self.models is None or self.model(name) is not None:
            return ""
        return f"model {name!r} is not on the server at {self.url} (it has {_names(self.models)}); {REFRESH_HINT}"

    def problems(self, model: str, loras: str, ip_adapter: str) -> list[tuple[str, str]]:
        """Every problem of these request values -> [(field, message)], in field order.
        ``loras`` is the request's text (see ``protocol.parse_loras``)."""
        found = []
        if message := self.model_problem(model):
            found.append(("model", message))
        for name, _weight in protocol.parse_loras(loras):
            if message := self.lora_problem(name, model):
                found.append(("loras", message))
        if message := self.ip_adapter_problem(ip_adapter, model):
            found.append(("ip_adapter", message))
        return found

    def check(self, request) -> None:
        """A request whose model, LoRAs and IP-Adapter this server offers, in the model's
        family; else ProtocolError naming the first field at fault."""
        for field, message in self.problems(request.model, request.loras, request.ip_adapter):
            raise ProtocolError(field, message)

    def _problem(self, what: str, offers, offer: Offer | None, name: str, model: str) -> str:
        if offers is None:
            return ""
        if offer is None:
            return f"{what} {name!r} is not on the server at {self.url} (it has {_names(offers)}); {REFRESH_HINT}"
        family = self.model_family(model)
        if offer.family and family and offer.family != family:
            shown = model or f"the server's default ({self.default})"
            return (f"{what} {name!r} is for {family_title(offer.family)} models; the model {shown} is "
                    f"{family_title(family)}: pick one for {family_title(family)}")
        return ""


def _offers(entries, detail=None) -> tuple[Offer, ...] | None:
    """A list of the answer -> Offers (entries without a name are skipped); None stays None."""
    if not isinstance(entries, list):
        return None
    offers = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not entry.get("name"):
            continue
        offers.append(Offer(str(entry["name"]), str(entry.get("family") or ""),
                            detail(entry) if detail is not None else ""))
    return tuple(offers)


def _model_detail(entry: dict) -> str:
    """"depth ControlNet: a, b; loaded; 2.0 GB" from a model entry (what it has of those)."""
    controlnets = entry.get("controlnets")
    if controlnets is None and entry.get("controlnet"):  # an older server: one ControlNet
        controlnets = [entry["controlnet"]]
    parts = []
    if controlnets:
        parts.append("ControlNet: " + ", ".join(str(name) for name in controlnets))
    if entry.get("loaded") is not None:
        parts.append("loaded" if entry["loaded"] else "not loaded yet")
    size = entry.get("bytes")
    if isinstance(size, (int, float)) and size > 0:
        parts.append(f"{size / 1024 ** 3:.1f} GiB")
    return "; ".join(parts)


def _find(offers, name: str) -> Offer | None:
    return next((offer for offer in offers or () if offer.name == name), None)


def _names(offers) -> str:
    names = [offer.name for offer in offers]
    if not names:
        return "none"
    return ", ".join(names[:SHOWN_NAMES]) + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES
                                             else "")


CATALOG = Catalog()  # the last lists a check got (the panel's dropdowns); empty before any


def remember(catalog: Catalog) -> None:
    """Keep ``catalog`` as the lists the panel offers."""
    global CATALOG
    CATALOG = catalog


__all__ = ["Offer", "Catalog", "CATALOG", "remember", "family_title"]
