#!/usr/bin/env python3
"""Writes tiny-model/tokenizer.json (+ tokenizer_config.json with the Qwen3 chat template, generation_config.json):
a valid Qwen-style byte-level BPE tokenizer with a small vocabulary (ids < 320) for synthetic-model tests."""
import json, os, sys

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, [chr(c) for c in cs]))

b2u = bytes_to_unicode()
vocab = {b2u[b]: b for b in range(256)}
merges = []
def merge(a, b):
    m = a + b
    merges.append([a, b])
    if m not in vocab:
        vocab[m] = len(vocab)
G = b2u[ord(' ')]
C = b2u[ord('\n')]
for a, b in [(G, 't'), ('h', 'e'), ('i', 'n'), ('e', 'r'), ('a', 'n'), (G, 'a'), (G, 's'), ('o', 'u'), (G, 'w'), ('l', 'l'),
             (G + 't', 'he'), ('i', 's'), ('o', 'n'), (G, 'i'), (G, 'h'), ('e', 'l'), ('el', 'l'), ('ell', 'o'), ('H', 'ello'),
             (G, 'o'), ('o', 'r'), (G + 'w', 'or'), ('l', 'd'), (G + 'wor', 'ld'), (C, C), (G, G), ('r', 'e'), (G, 'b'), (G, 'c'),
             ('a', 't'), (G + 'c', 'at'), ('in', 'g'), ('e', 's'), (G, 'm'), ('a', 'r'), ('e', 'n'), (G, 'd'), ('o', 'g'), (G + 'd', 'og'),
             ('s', 't'), ('u', 's'), ('us', 'er'), ('a', 's'), ('as', 's'), ('ass', 'is'), ('assis', 't'), ('assist', 'an'), ('assistan', 't'),
             ('y', 's'), ('ys', 't'), ('s', 'yst'), ('syst', 'em'), ('e', 'm'), ('t', 'h'), ('th', 'in'), ('thin', 'k')]:
    merge(a, b)
added_contents = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<tool_call>", False), ("</tool_call>", False),
                  ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]
added = []
for content, special in added_contents:
    added.append({"id": len(vocab) + len(added), "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                  "normalized": False, "special": special})
pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": {"type": "NFC"},
       "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                                                               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
       "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
       "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                 "fuse_unk": False, "byte_fallback": False, "ignore_merges": False, "vocab": vocab, "merges": merges}}
out = sys.argv[1] if len(sys.argv) > 1 else 'tiny-model'
os.makedirs(out, exist_ok=True)
json.dump(tok, open(os.path.join(out, 'tokenizer.json'), 'w'), ensure_ascii=False)
real_cfg = sys.argv[2] if len(sys.argv) > 2 else None
template = json.load(open(real_cfg))['chat_template'] if real_cfg else None
cfg = {"add_bos_token": False, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer",
       "model_max_length": 4096, "chat_template": template}
json.dump(cfg, open(os.path.join(out, 'tokenizer_config.json'), 'w'), ensure_ascii=False, indent=1)
ids = {a['content']: a['id'] for a in added}
json.dump({"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
           "pad_token_id": ids["<|endoftext|>"]}, open(os.path.join(out, 'generation_config.json'), 'w'), indent=1)
print('vocab', len(vocab), 'added', len(added), 'max id', len(vocab) + len(added) - 1)
