"""Item text following TIGER's recipe (title, price, brand, categories) with what the data has."""
from __future__ import annotations

from rqsid_jax.data.dataset import ItemTable


def item_text(items: ItemTable, i: int) -> str:
    """One item's text: title, brand, categories and price as labelled parts."""
    parts = []
    if items.titles[i]:
        parts.append(f"Title: {items.titles[i]}")
    if items.prices[i] is not None:
        parts.append(f"Price: {items.prices[i]:.2f}")
    if items.brands[i]:
        parts.append(f"Brand: {items.brands[i]}")
    if items.categories[i]:
        parts.append("Categories: " + ", ".join(items.categories[i]))
    # An item with no text at all still gets a distinct string so it is not merged with others.
    return "; ".join(parts) if parts else f"Item {items.asins[i]}"


def item_texts(items: ItemTable) -> list[str]:
    """item_text for every item, in item order."""
    return [item_text(items, i) for i in range(len(items))]


def item_field_texts(items: ItemTable) -> tuple[list[str], list[str]]:
    """(titles, attributes) per item, for embedding the fields separately.

    With a bag-of-words embedder, brand and category words shared by thousands of items
    dominate a joined string and pull distinct products together; embedding the title on its
    own keeps what tells items apart.
    """
    titles = [items.titles[i] or f"Item {items.asins[i]}" for i in range(len(items))]
    attrs = []
    for i in range(len(items)):
        parts = []
        if items.brands[i]:
            parts.append(f"Brand: {items.brands[i]}")
        if items.categories[i]:
            parts.append("Categories: " + ", ".join(items.categories[i]))
        if items.prices[i] is not None:
            parts.append(f"Price: {items.prices[i]:.2f}")
        attrs.append("; ".join(parts) or "Unknown")
    return titles, attrs
