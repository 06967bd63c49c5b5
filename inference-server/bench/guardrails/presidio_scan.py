"""Microsoft Presidio's analyzer over the labelled corpus, as the guardrails benchmark's peer.

Only the pattern-based recognizers of the kinds Sluice detects are asked for; spaCy runs a
blank English pipeline (no NER model: none of these kinds needs one, and the models are not on
PyPI). Writes one line of findings per corpus line, then prints how long one text takes.

    python presidio_scan.py CORPUS.jsonl FINDINGS.jsonl
"""

import json
import sys
import tempfile
import time

import spacy
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider

KINDS = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"]


def main(corpus, findings):
    blank = tempfile.mkdtemp(prefix="presidio-blank-en-")
    spacy.blank("en").to_disk(blank)
    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": blank}]}
    engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    texts = [json.loads(line)["text"] for line in open(corpus)]
    with open(findings, "w") as out:
        for text in texts:
            found = analyzer.analyze(text=text, language="en", entities=KINDS)
            spans = [{"kind": r.entity_type, "start": r.start, "end": r.end, "score": r.score} for r in found]
            out.write(json.dumps({"spans": spans}) + "\n")
    started, scanned = time.perf_counter(), 0
    while time.perf_counter() - started < 5:
        for text in texts:
            analyzer.analyze(text=text, language="en", entities=KINDS)
        scanned += len(texts)
    micros = (time.perf_counter() - started) * 1e6 / scanned
    print(json.dumps({"tool": "presidio", "texts": scanned, "us_per_text": micros}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
