"""A shop API: search a catalogue, fill a cart, place an order — the second task family.

Unlike file operations the arguments are ids, quantities and addresses copied from the
request or from an earlier tool result, and most tasks take two calls:

- `add`: "Add 3 of item P-204 to my cart."                          add_to_cart
- `remove`: a cart with items; "Take item P-204 out of my cart."     remove_from_cart
- `checkout`: a filled cart; "Place the order, ship to 12 Elm St."   place_order
- `buy`: "Order 2 of item P-204 and ship them to 12 Elm St."         add_to_cart, place_order
- `find_add`: "Find the walnut desk lamp and add one to my cart."    search_products, add_to_cart

The checker compares the final cart and orders with the expected ones, and wants no
failed call and a final answer. Train and test tasks draw product names, ids and streets
from disjoint pools, so a held-out success is a skill, not a memory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

from tinygpt.runtime.environments import Environment, EnvTask, Reward, Transcript, tool

KINDS = ("add", "remove", "checkout", "buy", "find_add")
# The tools a solution of each kind calls, in order (Environment.plan).
_PLANS = {"add": ("add_to_cart",), "remove": ("remove_from_cart",), "checkout": ("place_order",),
          "buy": ("add_to_cart", "place_order"), "find_add": ("search_products", "add_to_cart")}

TOOLS = [
    tool("add_to_cart", "Add a product to the cart.", {"product_id": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1, "maximum": 9}}),
    tool("place_order", "Order everything in the cart, shipped to an address.", {"address": {"type": "string"}}),
    tool("remove_from_cart", "Remove a product from the cart.", {"product_id": {"type": "string"}}),
    tool("search_products", "Find products by name.", {"query": {"type": "string"}}),
    tool("view_cart", "Show the cart.", {}),
]

SYSTEM = ("You are a shopping assistant. Use the tools to do exactly what the user asks, one call at a time. "
          "When it is done, reply with one short sentence.")

_POOLS = {
    "train": {
        "products": ["walnut desk lamp", "steel water bottle", "wool blanket", "bamboo cutting board", "canvas backpack",
                     "ceramic mug", "linen apron", "cotton towel", "glass teapot", "oak bookshelf", "leather wallet", "rain jacket"],
        "prefix": "P",
        "streets": ["Elm Street", "Maple Avenue", "River Road", "Hill Lane", "Park Drive", "Lake View"],
    },
    "test": {
        "products": ["copper kettle", "silk scarf", "pine stool", "marble coaster", "denim cap", "brass candle holder",
                     "velvet cushion", "clay planter"],
        "prefix": "Q",
        "streets": ["Birch Court", "Harbor Way", "Mill Street", "Cedar Row"],
    },
}

_PHRASES = {
    "add": ["Add {qty} of item {pid} to my cart.", "Put {qty} x {pid} in the cart, please.", "I want {qty} of product {pid} in my cart."],
    "remove": ["Take item {pid} out of my cart.", "Remove {pid} from the cart.", "Please delete product {pid} from my cart."],
    "checkout": ["Place the order and ship it to {addr}.", "Check out my cart, delivery to {addr}.", "Order what is in my cart; the address is {addr}."],
    "buy": ["Order {qty} of item {pid} and ship to {addr}.", "Buy {qty} x {pid}, deliver to {addr}.", "I need {qty} of product {pid} sent to {addr}."],
    "find_add": ["Find the {name} and add one to my cart.", "Search for the {name} and put 1 in my cart.", "Add one {name} to my cart (look it up first)."],
}


def _example(i: int, ask: str, name: str, arguments: dict[str, Any], result: dict[str, Any], answer: str) -> list[dict[str, Any]]:
    call_id = f"call_example_{i}"
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
    return [{"role": "user", "content": ask}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}, {"role": "assistant", "content": answer}]


# One worked example on an id and address outside both pools: a small model copies the
# shape of a call far more readily than it reads a schema.
PRIMER = _example(0, "Add 2 of item Z-9 to my cart.", "add_to_cart", {"product_id": "Z-9", "quantity": 2},
                  {"ok": True, "cart": {"Z-9": 2}}, "Added 2 of Z-9 to your cart.")


class Shop(Environment):
    tools = TOOLS
    max_turns = 4
    max_tokens = 64

    def tasks(self, split, n, seed) -> list[EnvTask]:
        pool = _POOLS[split]
        rng = random.Random(f"shop:{split}:{seed}")
        out, seen = [], set()
        i = 0
        while len(out) < n:
            kind = KINDS[i] if i < len(KINDS) else rng.choice(KINDS)
            i += 1
            task = _make(rng, kind, pool)
            key = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).hexdigest()[:10]
            if key in seen:  # one split never holds the same task twice
                continue
            seen.add(key)
            prompt = task.pop("prompt")
            out.append(EnvTask(id=f"shop-{split}-{seed}-{len(out)}-{key}", kind=kind,
                               messages=[{"role": "system", "content": SYSTEM}, *PRIMER, {"role": "user", "content": prompt}],
                               data=task))
        return out

    def reset(self, task: EnvTask) -> dict[str, Any]:
        return {"catalogue": task.data["catalogue"], "cart": dict(task.data["cart"]), "orders": []}

    def step(self, state: dict[str, Any], name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        cart, catalogue = state["cart"], state["catalogue"]
        if name == "search_products":
            q = str(arguments.get("query", "")).strip().lower()
            hits = [{"product_id": pid, "name": nm} for pid, nm in catalogue.items() if q and (q in nm or nm in q)]
            return {"ok": True, "results": hits}
        if name == "view_cart":
            return {"ok": True, "cart": cart}
        if name == "add_to_cart":
            pid, qty = arguments.get("product_id"), arguments.get("quantity")
            if pid not in catalogue:
                return {"ok": False, "error": f"no product {pid!r}"}
            if not isinstance(qty, int) or not 1 <= qty <= 9:
                return {"ok": False, "error": "quantity must be 1 to 9"}
            cart[pid] = cart.get(pid, 0) + qty
            return {"ok": True, "cart": cart}
        if name == "remove_from_cart":
            pid = arguments.get("product_id")
            if pid not in cart:
                return {"ok": False, "error": f"{pid!r} is not in the cart"}
            del cart[pid]
            return {"ok": True, "cart": cart}
        if name == "place_order":
            address = str(arguments.get("address", "")).strip()
            if not cart or not address:
                return {"ok": False, "error": "the cart is empty" if not cart else "an address is needed"}
            state["orders"].append({"items": dict(cart), "address": address})
            cart.clear()
            return {"ok": True, "order": len(state["orders"])}
        return {"ok": False, "error": f"unknown tool {name!r}"}

    def score(self, task: EnvTask, state: dict[str, Any], transcript: Transcript) -> Reward:
        want = task.data["expected"]
        reasons = []
        if state["cart"] != want["cart"]:
            reasons.append(f"cart is {state['cart']}, expected {want['cart']}")
        got_orders = [{"items": o["items"], "address": _norm(o["address"])} for o in state["orders"]]
        if got_orders != [{"items": o["items"], "address": _norm(o["address"])} for o in want["orders"]]:
            reasons.append("orders differ from the request")
        failed = sum(1 for c in transcript.calls if not (isinstance(c.result, dict) and c.result.get("ok")))
        if failed:
            reasons.append(f"{failed} failed call(s)")
        if not transcript.finished:
            reasons.append("no final answer within the turn limit")
        return Reward(reward=0.0 if reasons else 1.0, reason="; ".join(reasons) or "done")

    def plan(self, task: EnvTask) -> list[str]:
        return list(_PLANS[task.kind])

    def hindsight(self, task: EnvTask, state: dict[str, Any], transcript: Transcript) -> EnvTask | None:
        """What a clean run did, as a task of one of the five kinds (None for anything else)."""
        calls = transcript.calls
        if not transcript.finished or not calls or any(not (isinstance(c.result, dict) and c.result.get("ok")) for c in calls):
            return None
        start, cart, orders = task.data["cart"], state["cart"], state["orders"]
        rng = random.Random(f"hindsight:{task.id}:{json.dumps([cart, orders], sort_keys=True)}")
        searched = {h["product_id"] for c in calls if c.name == "search_products" for h in c.result.get("results", [])}
        kind, fields = None, {}
        if not orders:
            added = {p: q for p, q in cart.items() if start.get(p) != q}
            removed = [p for p in start if p not in cart]
            if len(added) == 1 and not removed and not set(added) & set(start):
                (pid, qty), = added.items()
                kind = "find_add" if qty == 1 and pid in searched else "add"
                fields = {"pid": pid, "qty": qty, "name": state["catalogue"][pid]}
            elif len(removed) == 1 and not added:
                kind, fields = "remove", {"pid": removed[0]}
        elif len(orders) == 1 and not cart and _plain_address(orders[0]["address"]):
            items, addr = orders[0]["items"], orders[0]["address"]
            if start and items == start:
                kind, fields = "checkout", {"addr": addr}
            elif not start and len(items) == 1:
                (pid, qty), = items.items()
                kind, fields = "buy", {"pid": pid, "qty": qty, "addr": addr}
        if kind is None:
            return None
        prompt = rng.choice(_PHRASES[kind]).format(**{"qty": "", "pid": "", "addr": "", "name": "", **fields})
        data = {"catalogue": task.data["catalogue"], "cart": dict(start),
                "expected": {"cart": dict(cart), "orders": [dict(o) for o in orders]}}
        return EnvTask(id=f"{task.id}-hindsight-{kind}", kind=kind, data=data,
                       messages=[*task.messages[:-1], {"role": "user", "content": prompt}])


def _plain_address(address: Any) -> bool:
    return isinstance(address, str) and 0 < len(address) <= 80 and not any(c in address for c in "\n\r{}")


def _norm(address: str) -> str:
    return " ".join(address.lower().replace(",", " ").replace(".", " ").split())


def _make(rng: random.Random, kind: str, pool: dict[str, Any]) -> dict[str, Any]:
    names = rng.sample(pool["products"], 4)
    ids = rng.sample(range(100, 1000), 4)
    catalogue = {f"{pool['prefix']}-{i}": nm for i, nm in zip(ids, names)}
    pids = list(catalogue)
    qty = rng.randint(1, 5)
    addr = f"{rng.randint(1, 99)} {rng.choice(pool['streets'])}"
    phrase = rng.choice(_PHRASES[kind])
    cart: dict[str, int] = {}
    if kind in ("remove", "checkout"):
        cart = {pid: rng.randint(1, 3) for pid in rng.sample(pids, 2)}
    pid = rng.choice(sorted(cart)) if kind == "remove" else pids[0]
    expected_cart, orders = copy.deepcopy(cart), []
    if kind == "add":
        expected_cart[pid] = qty
    elif kind == "remove":
        del expected_cart[pid]
    elif kind == "checkout":
        orders, expected_cart = [{"items": dict(cart), "address": addr}], {}
    elif kind == "buy":
        orders, expected_cart = [{"items": {pid: qty}, "address": addr}], {}
    elif kind == "find_add":
        expected_cart[pid] = 1
    prompt = phrase.format(qty=qty, pid=pid, addr=addr, name=catalogue[pid])
    return {"prompt": prompt, "catalogue": catalogue, "cart": cart, "expected": {"cart": expected_cart, "orders": orders}}
