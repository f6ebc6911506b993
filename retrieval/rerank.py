"""The listwise LLM ranker ("Sliding Windows Are Not the End", Liu et al. 2024): all candidates in one prompt.

The prompt is RankGPT's: numbered passages ``[1] ... [N]`` and the instruction to answer with the full
order as ``[2] > [1] > ...``. Modes:

- ``generate``: one prompt with every candidate, greedy decoding of the whole permutation (the paper's
  full ranking). Parsing is forgiving: every number is an identifier, duplicates and out-of-range ids
  are dropped, missing ids are appended in input order.
- ``sliding-window``: RankGPT's baseline; windows of ``window`` candidates from the bottom of the list to
  the top, moving by ``stride``, each window one generation.
- ``first-token``: FIRST's single-pass ranking: candidates ordered by the model's probability of
  starting its answer with their identifier. Identifiers here are digit strings the tokenizer splits
  into several tokens, so the score is the log-probability of the whole identifier (``1`` then ``]``,
  ``1`` then ``2`` ...): one prefill, then one step that scores every identifier's later digits at once
  (tree attention over the identifiers' token trie). The KV cache of the prompt's first tokens (the chat
  template and instruction, shared by every query) is kept from one query to the next.

Each passage is truncated to a token budget derived from the model's context size, the number of
candidates and the room the answer needs. Every call reports its input and output tokens, seconds and
parse failures (an answer without a single usable identifier) so that evaluation can show the cost.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from retrieval.causal_lm import CausalLM
from retrieval.errors import SiftrankError

Mode = Literal["generate", "sliding-window", "first-token"]
MODES = ("generate", "sliding-window", "first-token")
MIN_PASSAGE_TOKENS = 8
MIN_SHARED_TOKENS = 8  # shorter shared prefixes are prefilled again rather than cut out of the kept cache
ANSWER_TOKENS_PER_ID = 5  # " [", up to 3 digits, "]", " >" — digits are split one per token
PLACEHOLDER = "\x00PASSAGES\x00"


@dataclass
class RankStats:
    """What one ranking cost and whether its answer could be read."""

    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    calls: int = 0
    parse_failures: int = 0  # answers with no usable identifier at all
    repaired: int = 0  # answers that missed, repeated or invented identifiers (fixed by the parser)
    truncated_passages: int = 0

    def add(self, other: RankStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Prompt:
    """A prompt's token ids and how it was built."""

    ids: list[int]
    passage_tokens: int  # the per-passage budget used
    truncated: int = 0
    pieces: dict[str, int] = field(default_factory=dict)


def instruction(n: int, query: str) -> tuple[str, str]:
    """RankGPT's instruction text before and after the numbered passages."""
    head = (f"I will provide you with {n} passages, each indicated by a numerical identifier []. "
            f"Rank the passages based on their relevance to the search query: {query}.\n\n")
    tail = (f"\nSearch Query: {query}.\nRank the {n} passages above based on their relevance to the search query. "
            "All the passages should be included and listed using identifiers, in descending order of relevance. "
            "The output format should be [] > [], e.g., [2] > [1]. Only respond with the ranking results, "
            "do not say any word or explain.")
    return head, tail


def parse_order(text: str, n: int) -> tuple[list[int], bool, bool]:
    """0-based order from an answer: (order, failed, repaired). Every number is a 1-based identifier;
    duplicates and out-of-range numbers are dropped and missing candidates appended in input order."""
    seen: list[int] = []
    numbers = re.findall(r"\d+", text)
    for number in numbers:
        i = int(number) - 1
        if 0 <= i < n and i not in seen:
            seen.append(i)
    failed = not seen
    repaired = len(seen) != n or len(numbers) != n
    return seen + [i for i in range(n) if i not in seen], failed, repaired


class ListwiseRanker:
    """Ranks a query's candidate passages with a causal LM in one of three modes (see the module doc)."""

    def __init__(self, llm: CausalLM, mode: Mode = "generate", window: int = 20, stride: int = 10,
                 max_passage_tokens: int = 100, context_size: int | None = None) -> None:
        if mode not in MODES:
            raise SiftrankError(f"rerank mode must be one of {', '.join(MODES)}, not '{mode}'")
        if window < 2 or not 1 <= stride < window:
            raise SiftrankError(f"sliding window needs window >= 2 and 1 <= stride < window (got {window}, {stride})")
        if max_passage_tokens < MIN_PASSAGE_TOKENS:
            raise SiftrankError(f"max_passage_tokens must be at least {MIN_PASSAGE_TOKENS}")
        self.llm, self.mode, self.window, self.stride = llm, mode, window, stride
        self.max_passage_tokens = max_passage_tokens
        self._context = context_size
        self.reuse_prefix = True  # first-token mode keeps the last prompt's KV cache for the prefix the next shares
        self._prefix: tuple[object, list[int], Any] | None = None
        self._lock = threading.Lock()  # the kept cache is one per ranker

    @property
    def context_size(self) -> int:
        return self._context or self.llm.context_size

    def config(self) -> dict[str, object]:
        """What produced a ranking (for metrics.json and manifests)."""
        return {**self.llm.identity(), "mode": self.mode, "window": self.window, "stride": self.stride,
                "max_passage_tokens": self.max_passage_tokens, "device": self.llm.device,
                "precision": self.llm.precision, "context_size": self.context_size}

    # --- prompts -----------------------------------------------------------------------------------
    def _frame(self, n: int, query: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the passage lines: the chat template around the instruction."""
        tokenizer = self.llm.tokenizer
        head, tail = instruction(n, query)
        text = head + PLACEHOLDER + tail
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        before, after = text.split(PLACEHOLDER)
        return self._ids(before), self._ids(after)

    def _ids(self, text: str) -> list[int]:
        return list(self.llm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_room(self, n: int) -> int:
        """Tokens reserved for the answer: the whole permutation, or one identifier in first-token mode."""
        return ANSWER_TOKENS_PER_ID * (1 if self.mode == "first-token" else n) + 4

    def passage_budget(self, n: int, fixed: int) -> int:
        """Tokens per passage so that ``n`` passages, the frame and the answer fit the context."""
        line = ANSWER_TOKENS_PER_ID + 1  # "[i] " and the newline
        room = self.context_size - fixed - self.answer_room(n) - n * line
        budget = min(self.max_passage_tokens, room // max(n, 1))
        if budget < MIN_PASSAGE_TOKENS:
            most = max(0, (self.context_size - fixed - 8) // (line + MIN_PASSAGE_TOKENS + ANSWER_TOKENS_PER_ID))
            raise SiftrankError(f"{n} candidates do not fit the ranker's {self.context_size}-token context "
                                f"(at most about {most} at {MIN_PASSAGE_TOKENS} tokens a passage): lower the depth")
        return budget

    def prompt(self, query: str, passages: list[str]) -> Prompt:
        """The ranking prompt for ``passages`` (in this order), each cut to the token budget."""
        before, after = self._frame(len(passages), query)
        budget = self.passage_budget(len(passages), len(before) + len(after))
        ids, truncated = list(before), 0
        for i, passage in enumerate(passages, 1):
            tokens = self._ids(" ".join(passage.split()))
            truncated += len(tokens) > budget
            ids += self._ids(f"[{i}] ") + tokens[:budget] + self._ids("\n")
        return Prompt(ids + after, budget, truncated)

    def answer(self, order: list[int]) -> list[tuple[list[int], int | None]]:
        """The target answer for a 0-based ``order`` as token pieces: (ids, rank) for each identifier
        (rank 1 first) and (ids, None) for separators and the end-of-sequence token (for training)."""
        pieces: list[tuple[list[int], int | None]] = []
        for rank, i in enumerate(order, 1):
            if rank > 1:
                pieces.append((self._ids(" >"), None))
            pieces.append((self._ids(f"{' ' if rank > 1 else ''}[{i + 1}]"), rank))
        eos = self.llm.tokenizer.eos_token_id
        if eos is not None:
            pieces.append(([int(eos)], None))
        return pieces

    # --- ranking -----------------------------------------------------------------------------------
    def rank(self, query: str, passages: list[str]) -> tuple[list[int], RankStats]:
        """A 0-based order of ``passages`` (best first) and what it cost."""
        scores, stats = self.score(query, passages)
        return sorted(range(len(passages)), key=lambda i: (-scores[i], i)), stats

    def score(self, query: str, passages: list[str]) -> tuple[list[float], RankStats]:
        """A score per passage (higher is better) and what it cost: first-token mode's identifier
        log-probabilities; in the other modes ``n - position`` in the LLM's order (what fusion reads)."""
        stats = RankStats()
        n = len(passages)
        if n < 2:  # nothing to order: no model call
            return [float(n - i) for i in range(n)], stats
        if self.mode == "sliding-window":
            order = list(range(n))
            start = max(0, n - self.window)
            while True:
                part = order[start:start + self.window]
                sub, cost = self._rank_once(query, [passages[i] for i in part])
                stats.add(cost)
                order[start:start + self.window] = [part[i] for i in sub]
                if start == 0:
                    break
                start = max(0, start - self.stride)
            return _position_scores(order), stats
        if self.mode == "first-token":
            return self._scored_once(query, passages, stats)
        order, cost = self._rank_once(query, passages)
        stats.add(cost)
        return _position_scores(order), stats

    def _scored_once(self, query: str, passages: list[str], stats: RankStats) -> tuple[list[float], RankStats]:
        """First-token mode: one prefill (after the prefix the previous prompt shares) and one tree step."""
        import torch

        prompt = self.prompt(query, passages)
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            scores = self._first_token(self.llm.model, prompt.ids, len(passages))
        stats.add(RankStats(input_tokens=len(prompt.ids), seconds=time.perf_counter() - start, calls=1,
                            truncated_passages=prompt.truncated))
        return scores, stats

    def _rank_once(self, query: str, passages: list[str]) -> tuple[list[int], RankStats]:
        """Generation of the whole permutation for one prompt, parsed."""
        import torch

        prompt = self.prompt(query, passages)
        ids = torch.tensor([prompt.ids], device=self.llm.model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.llm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                             max_new_tokens=self.answer_room(len(passages)),
                                             pad_token_id=self.llm.tokenizer.pad_token_id)
        new = output[0, ids.shape[1]:]
        text = self.llm.tokenizer.decode(new, skip_special_tokens=True)
        order, failed, repaired = parse_order(text, len(passages))
        stats = RankStats(input_tokens=len(prompt.ids), output_tokens=int(new.shape[0]), seconds=time.perf_counter() - start,
                          calls=1, parse_failures=int(failed), repaired=int(repaired), truncated_passages=prompt.truncated)
        return order, stats

    def first_token_scores(self, query: str, passages: list[str]) -> list[float]:
        """log p(answer starts with the identifier of passage i) for every passage (first-token mode's scores)."""
        return self._scored_once(query, passages, RankStats())[0]

    def _first_token(self, model, ids: list[int], n: int) -> list[float]:
        """log p(identifier tokens | prompt + "[") of each candidate in two forward passes: the prompt (its
        first tokens' keys and values reused from the previous prompt where they agree: the chat template and
        instruction every query shares) and one step over every inner node of the identifiers' token trie at
        once, each node attending to the prompt and its own ancestors (a tree attention mask)."""
        import torch

        opening = self._ids("[")
        paths = {i: self._ids(f"[{i + 1}]")[len(opening):] for i in range(n)}
        if any(self._ids(f"[{i + 1}]")[:len(opening)] != opening for i in range(n)):
            raise SiftrankError("first-token mode needs identifiers that tokenize as '[' + digits + ']'")
        device = model.device
        full = list(ids) + opening
        name = _cache_argument(model)
        cache, done = self._reusable_prefix(model, full)
        out = model(torch.tensor([full[done:]], device=device), use_cache=True, logits_to_keep=1, **{name: cache})
        cache = getattr(out, name)
        logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        scores = {i: float(logp[path[0]]) for i, path in paths.items()}
        # the trie's inner nodes: every proper prefix of an identifier's digit path (parents before children)
        nodes = sorted({tuple(p[:d]) for p in paths.values() for d in range(1, len(p))}, key=lambda t: (len(t), t))
        if nodes:
            where = {node: j for j, node in enumerate(nodes)}
            past = len(full)
            dtype = next(model.parameters()).dtype
            mask = torch.full((1, 1, len(nodes), past + len(nodes)), torch.finfo(dtype).min, dtype=dtype, device=device)
            mask[..., :past] = 0
            for j, node in enumerate(nodes):
                for d in range(1, len(node) + 1):  # its ancestors and itself
                    mask[0, 0, j, past + where[node[:d]]] = 0
            step = torch.tensor([[node[-1] for node in nodes]], device=device)
            positions = torch.tensor([[past + len(node) - 1 for node in nodes]], device=device)
            out = model(step, position_ids=positions, attention_mask=mask, use_cache=True, **{name: cache})
            rows = torch.log_softmax(out.logits[0].float(), dim=-1)
            for i, path in paths.items():
                scores[i] += sum(float(rows[where[tuple(path[:d])], path[d]]) for d in range(1, len(path)))
        self._keep_prefix(cache, full)
        return [scores[i] for i in range(n)]

    def _reusable_prefix(self, model, ids: list[int]):
        """The cache of the previous prompt cut to the tokens it shares with ``ids`` (at least
        ``MIN_SHARED_TOKENS``, and never the whole prompt), or a new empty cache; and how many tokens it holds."""
        from transformers import DynamicCache

        kept = self._prefix
        if kept is not None and kept[0] is model and self.reuse_prefix:
            shared = 0
            for a, b in zip(kept[1][:kept[2].get_seq_length()], ids[:-1]):
                if a != b:
                    break
                shared += 1
            if shared >= MIN_SHARED_TOKENS:
                _crop(kept[2], shared)
                return kept[2], shared
        self._prefix = None
        return DynamicCache(config=model.config), 0

    def _keep_prefix(self, cache, ids: list[int]) -> None:
        """Keep the prompt's cache for the next query (the tree step's entries cut off)."""
        if self.reuse_prefix:
            _crop(cache, len(ids))
            self._prefix = (self.llm.model, list(ids), cache)

def _crop(cache, length: int) -> None:
    """Cut a KV cache to its first ``length`` tokens (a negative ``crop`` removes tokens in every transformers version)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _cache_argument(model) -> str:
    """The forward argument (and output field) of the KV cache: transformers renamed past_key_values to cache."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model in training
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _position_scores(order: list[int]) -> list[float]:
    """``n - position`` for every item of a 0-based order (the first gets ``n``)."""
    scores = [0.0] * len(order)
    for position, i in enumerate(order):
        scores[i] = float(len(order) - position)
    return scores


def importance_weight(rank: int) -> float:
    """The paper's weight for the tokens of the identifier at ``rank``: 1 + 1/log2(rank + 1)."""
    return 1.0 + 1.0 / math.log2(rank + 1)
