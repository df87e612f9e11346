"""Public API prices per million tokens, from a JSON file the operator keeps.

{"currency": "EUR", "models": {"qwen-coder": {"prompt": 0.40, "completion": 1.20,
                                              "compare_with": "a hosted 32B coder"}}}
"""
import json


class PriceError(ValueError):
    pass


def load_prices(path):
    try:
        with open(path, encoding="utf-8") as handle:
            prices = json.load(handle)
    except OSError as exc:
        raise PriceError("cannot read the prices file %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise PriceError("the prices file %s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(prices.get("models"), dict):
        raise PriceError("the prices file %s has no \"models\" object" % path)
    return prices


def price_of(model, prices):
    """The price of a usage row's model: by its name, or by its name without the gateway's
    provider prefix (rows name the engine's model as LiteLLM calls it, "hosted_vllm/tiny-code";
    the prices file names "tiny-code")."""
    models = prices["models"]
    if model in models:
        return models[model]
    if model and "/" in model:
        return models.get(model.split("/", 1)[1])
    return None


def price_tokens(token_rows, prices, path):
    """One row per model: its tokens priced per million. An unpriced model is an error naming it."""
    rows = []
    missing = [r["model"] for r in token_rows if price_of(r["model"], prices) is None]
    if missing:
        raise PriceError("no public price for model(s) %s: add them under \"models\" in %s "
                         "(prompt and completion price per million tokens)" % (", ".join(missing), path))
    for row in token_rows:
        price = price_of(row["model"], prices)
        prompt_cost = row["prompt_tokens"] / 1e6 * float(price["prompt"])
        completion_cost = row["completion_tokens"] / 1e6 * float(price["completion"])
        rows.append({"model": row["model"], "compared_with": price.get("compare_with", ""),
                     "prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
                     "prompt_cost": round(prompt_cost, 2), "completion_cost": round(completion_cost, 2),
                     "total_cost": round(prompt_cost + completion_cost, 2)})
    return rows
