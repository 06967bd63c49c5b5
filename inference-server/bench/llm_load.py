"""Load for serve-llm.sh: streamed chat completions from N concurrent OpenAI clients against one
server; prints time to first token (median, p90) and aggregate completion tokens per second.

    llm_load.py BASE_URL CONCURRENCY REQUESTS MAX_TOKENS

Every request asks, greedily, for MAX_TOKENS tokens of an answer to one of a fixed set of
questions (the same sequence for every server). Tokens are counted from the usage the server
reports (`stream_options.include_usage`), else one per content chunk.
"""

import asyncio
import statistics
import sys
import time

from openai import AsyncOpenAI

QUESTIONS = [
    "Explain how a hash map works, with an example.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of the French Revolution?",
    "Describe how photosynthesis works in plants.",
    "Give me a recipe for a simple tomato soup.",
    "Explain the difference between TCP and UDP.",
    "Write a poem about the sea in winter.",
    "How does a compiler turn source code into a program?",
]


async def one(client: AsyncOpenAI, index: int, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - started
            chunks += 1
    return (first if first is not None else time.perf_counter() - started), (usage or chunks)


async def main() -> None:
    base, concurrency, requests, max_tokens = sys.argv[1], *map(int, sys.argv[2:5])
    client = AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    await one(client, 0, 4)  # warm-up
    queue = list(range(requests))
    results = []

    async def worker() -> None:
        while queue:
            results.append(await one(client, queue.pop(0), max_tokens))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ttft = sorted(first for first, _ in results)
    tokens = sum(count for _, count in results)
    p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
    print(f"{statistics.median(ttft):.3f} {p90:.3f} {tokens / wall:.1f} {tokens}")


if __name__ == "__main__":
    asyncio.run(main())
