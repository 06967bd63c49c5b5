"""How often llama.cpp disagrees with itself: its greedy answers to tests/llama_cpp/cases.json
with its default F16 key/value cache, in the shape oracle.py judges (which runs an F32 cache).

    .venv-llama/bin/python self_check.py MODEL.gguf \
      | .venv-llama/bin/python oracle.py MODEL.gguf \
      | python3 -c 'import json,sys; v=json.load(sys.stdin)["verdicts"]; \
          t=[x for c in v if c["answer_tokens"]>1 for x in c["tokens"]]; \
          d=[x["margin"] for x in t if x["ours"]!=x["theirs"]]; print(len(t), len(d), max(d))'
"""

import json
import pathlib
import sys

from llama_cpp import Llama


def main() -> None:
    cases = json.loads((pathlib.Path(__file__).parent / "cases.json").read_text())
    llm = Llama(model_path=sys.argv[1], n_ctx=2048, n_threads=2, seed=0, verbose=False)
    answers = []
    for prompt, max_tokens in cases["prompts"]:
        choice = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        choice = choice["choices"][0]
        answers.append(
            {"prompt": prompt, "text": choice["text"], "finish_reason": choice["finish_reason"]}
        )
    for messages, max_tokens in cases["chats"]:
        choice = llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=0.0
        )["choices"][0]
        answers.append(
            {
                "messages": messages,
                "text": choice["message"]["content"],
                "finish_reason": choice["finish_reason"],
            }
        )
    json.dump({"cases": answers}, sys.stdout)


if __name__ == "__main__":
    main()
