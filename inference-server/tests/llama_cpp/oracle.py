"""llama.cpp as the oracle of the GGUF correctness test (tests/serve_gguf.rs), through
llama-cpp-python (built from source into .venv-llama by .ci/setup).

    .venv-llama/bin/python oracle.py MODEL.gguf < answers.json > verdicts.json

answers.json: {"cases": [{"prompt": "..." | "messages": [...], "text": "<our answer>",
                          "tokens": [<our token ids>], "finish_reason": "stop" | "length"}]}

For each case the prompt is tokenized as llama-cpp-python's own `create_completion` and
`create_chat_completion` do (the chat through the file's chat template with its Jinja
formatter); our answer's tokens follow it (without "tokens", our text tokenized again).
llama.cpp then runs prompt + answer in one pass with the logits of every position kept
(teacher forcing) and judges each of our tokens: its own greedy choice, or how far below its
choice it scored (the margin, in logits), and its log-probability of our token. An
answer that ended with "stop" is judged at the next position too: llama.cpp must pick an
end-of-generation token there. Its free-running greedy answer is printed as well.

llama.cpp keeps its key/value cache in F16 by default; the builtin runtime keeps it in F32,
so the oracle runs with an F32 cache (the same arithmetic, done by another engine).
"""

import json
import sys

import llama_cpp
import numpy
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


def main() -> None:
    model = sys.argv[1]
    cases = json.load(sys.stdin)["cases"]
    f32 = llama_cpp.GGML_TYPE_F32
    llm = Llama(
        model_path=model,
        n_ctx=2048,
        n_threads=2,
        seed=0,
        type_k=f32,
        type_v=f32,
        logits_all=True,
        flash_attn=False,
        verbose=False,
    )
    vocab = llm._model
    eos_id = vocab.token_eos()
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=vocab.token_get_text(eos_id),
        bos_token=vocab.token_get_text(vocab.token_bos()),
    )
    end_of_generation = {
        token for token in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab.vocab, token)
    }

    verdicts = []
    for case in cases:
        if "messages" in case:
            rendered = formatter(messages=case["messages"]).prompt
            prompt = llm.tokenize(rendered.encode(), add_bos=False, special=True)
        else:
            add_bos = vocab.add_bos_token()
            prompt = llm.tokenize(case["prompt"].encode(), add_bos=add_bos, special=True)
        answer = case.get("tokens")
        if answer is None:
            answer = llm.tokenize(case["text"].encode(), add_bos=False, special=False)
        round_trip = llm.detokenize(answer).decode(errors="replace") == case["text"]

        llm.reset()
        llm.eval(prompt + answer)
        scores = llm.scores[: len(prompt) + len(answer)]
        tokens = []
        for index, token in enumerate(answer):
            logits = scores[len(prompt) - 1 + index]
            best = int(logits.argmax())
            top = float(logits[best])
            log_sum = top + float(numpy.log(numpy.exp(logits - top).sum()))
            tokens.append(
                {
                    "ours": vocab.token_get_text(token),
                    "theirs": vocab.token_get_text(best),
                    "margin": float(logits[best] - logits[token]),
                    "logprob": float(logits[token]) - log_sum,
                }
            )
        ended = None
        if case["finish_reason"] == "stop":
            logits = scores[len(prompt) + len(answer) - 1]
            best = int(logits.argmax())
            end = max(end_of_generation, key=lambda token: logits[token])
            ended = {
                "theirs": vocab.token_get_text(best),
                "margin": float(logits[best] - logits[end]),
            }

        # llama.cpp's own greedy answer, for the record.
        if "messages" in case:
            free = llm.create_chat_completion(
                messages=case["messages"], max_tokens=len(answer) or 1, temperature=0.0
            )["choices"][0]["message"]["content"]
        else:
            free = llm.create_completion(
                case["prompt"], max_tokens=len(answer) or 1, temperature=0.0
            )["choices"][0]["text"]
        verdicts.append(
            {
                "prompt_tokens": len(prompt),
                "answer_tokens": len(answer),
                "round_trip": round_trip,
                "tokens": tokens,
                "ended": ended,
                "greedy": free,
            }
        )
    json.dump({"verdicts": verdicts}, sys.stdout)


if __name__ == "__main__":
    main()
