"""A stand-in for vLLM, which needs a GPU: it records what posttrain asks of it. ENGINES holds each LLM's
constructor arguments plus how many other engines were still running (built and not shut down, as vLLM
V1's engine-core process is) when it was built; PROMPTS holds every
prompt `generate` received, as given. A completion is the prompt's last tokens, reversed, then the first stop id,
so the caller's cutting and decoding run on real token ids."""
from types import SimpleNamespace

ENGINES: list[dict] = []
PROMPTS: list = []
LIVE: list = []  # engines built and not shut down


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Completion:
    def __init__(self, token_ids):
        self.token_ids = token_ids
        self.text = ""


class _Output:
    def __init__(self, prompt_token_ids, completions):
        self.prompt_token_ids = prompt_token_ids
        self.outputs = completions


class LLM:
    def __init__(self, **kwargs):
        ENGINES.append({**kwargs, "alive_before": len(LIVE)})
        LIVE.append(self)
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: LIVE.remove(self)))

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        PROMPTS.extend(prompts)
        params = sampling_params.kwargs
        stop = (params.get("stop_token_ids") or [])[:1]
        outputs = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"] if isinstance(prompt, dict) else [0]
            tail = list(reversed(ids))[: params["max_tokens"] - len(stop)]
            outputs.append(_Output(ids, [_Completion(tail[k:] + stop) for k in range(params.get("n", 1))]))
        return outputs


def reset() -> None:
    ENGINES.clear()
    PROMPTS.clear()
    LIVE.clear()
