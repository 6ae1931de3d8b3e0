from metaflow import FlowSpec, card, current, step
from metaflow.cards import Markdown


class CardsFlow(FlowSpec):
    """Cards of every kind a step can have: default, blank with appends, several per step, in
    foreach tasks, and one whose type does not exist (its render fails, nothing else does)."""

    @card
    @step
    def start(self):
        """A default card."""
        self.items = [0, 1]
        self.next(self.each, foreach="items")

    @card(type="blank", id="extra")
    @card(type="blank")
    @step
    def each(self):
        """Two blank cards per foreach task, both appended to."""
        current.card.append(Markdown(f"# item {self.input}"))
        current.card["extra"].append(Markdown(f"extra for item {self.input}"))
        self.value = self.input
        self.next(self.join)

    @card(type="no_such_card_type", save_errors=False)
    @card(type="blank", id="survivor")
    @step
    def join(self, inputs):
        """One card that cannot render, beside one that can."""
        current.card["survivor"].append(Markdown("the join's card"))
        self.total = sum(i.value for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        """No card."""


if __name__ == "__main__":
    CardsFlow()
