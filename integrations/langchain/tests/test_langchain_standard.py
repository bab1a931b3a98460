"""LangChain's standard suites for ChatLocus.

The integration suite runs against real loopback HTTP: two on-prem loci served by the scripted
endpoint (a stand-in for vLLM, see scripted_endpoint.py) reached through LiteLLM's hosted_vllm
provider, every call analysed, policy-checked and routed by the real Router.

Standard tests skipped, and why:
- test_serdes: ChatLocus is not LangChain-serializable (`is_lc_serializable()` is False): it holds a
  live Router (policy engine, breakers, measurements), and a serialised config path would not
  carry the policy bundle it was decided under.
- test_stream_time: needs VCR cassettes (`enable_vcr_tests`); recording a loopback server measures
  nothing. The cost of routing is measured by benchmarks/bench_langchain.py instead.
- test_pdf_inputs, test_audio_inputs, test_image_inputs, test_image_tool_message,
  test_pdf_tool_message, test_anthropic_inputs: multimodal and Anthropic-format inputs. ChatLocus
  passes content parts through to LiteLLM, so support depends on the locus chosen; neither the
  on-device model nor the scripted endpoint reads them, and these tests download their media from
  the internet, which tests here may not reach.
- usage details (audio, reasoning, cache tokens): not reported by the loci used here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_locus import ChatLocus
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from scripted_endpoint import locus, write_config


@pytest.fixture(scope="module")
def unit_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unit tests send nothing: the locus points at a loopback port nobody listens on."""
    return write_config(
        tmp_path_factory.mktemp("unit") / "locus.yaml",
        [locus("onprem", "onprem", "http://127.0.0.1:9")],
    )


class TestChatLocusUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _config(self, unit_config: Path) -> None:
        self.config_path = str(unit_config)

    @property
    def chat_model_class(self) -> type[ChatLocus]:
        return ChatLocus

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"config": self.config_path}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"LOCUS_CONFIG": self.config_path}, {}, {"config": self.config_path}


class TestChatLocusIntegration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _config(self, scripted_config: Path) -> None:
        self.config_path = str(scripted_config)

    @property
    def chat_model_class(self) -> type[ChatLocus]:
        return ChatLocus

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"config": self.config_path}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "hosted_vllm/scripted-edge"  # the second locus, pinned by its model string

    @property
    def supports_image_inputs(self) -> bool:
        return False  # see the module docstring

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False
