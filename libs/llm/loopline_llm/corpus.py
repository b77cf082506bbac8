"""The tiny model's corpus: synthetic customer-support dialogues over a few topics.

Generated once by ``python -m loopline_llm.corpus`` into ``data/support.txt`` (which ships with the project
and is what the model is trained on). The topics and their questions are also what the demo and the tests
send, so a shift from one topic to another is a text drift the monitor can find.
"""

from __future__ import annotations

import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "support.txt"
EOS = "<|endoftext|>"

PRODUCTS = ["laptop", "phone", "headset", "keyboard", "monitor", "router", "camera", "watch", "tablet", "speaker"]
PLANS = ["basic", "plus", "premium", "family", "business"]
CARRIERS = ["the courier", "the post office", "our delivery partner"]
DAYS = ["two", "three", "four", "five", "seven"]

TOPICS: dict[str, list[tuple[str, str]]] = {
    "billing": [
        ("I was charged twice for my {plan} plan this month.",
         "I am sorry about the double charge. I have refunded the second payment for your {plan} plan; it will "
         "reach your card in {days} business days."),
        ("Why did my invoice go up?",
         "Your invoice went up because the {plan} plan price changed this month. You can switch plans at any "
         "time in your account settings."),
        ("How do I update my payment method?",
         "Open Billing in your account settings, choose Payment methods and add the new card. The old card is "
         "removed after the next invoice."),
        ("Can I get a refund for my {plan} subscription?",
         "Yes. Refunds for the {plan} plan are possible within thirty days. I have started the refund; it takes "
         "{days} business days."),
        ("I do not recognise a charge on my statement.",
         "Thank you for telling us. The charge is for the {plan} plan. If you did not order it, I can cancel it "
         "and refund it today."),
    ],
    "shipping": [
        ("Where is my {product}? The tracking has not moved.",
         "Your {product} left our warehouse and is with {carrier}. Tracking updates can pause for a day; it "
         "should arrive within {days} days."),
        ("My {product} arrived damaged.",
         "I am sorry your {product} arrived damaged. I have sent a free replacement and a return label for the "
         "damaged one."),
        ("Can I change the delivery address for my order?",
         "Yes, while the order has not shipped. I have updated the delivery address; {carrier} will bring it to "
         "the new address."),
        ("How long does delivery take?",
         "Standard delivery takes {days} business days. Express delivery takes one day and is shown at checkout."),
        ("The {product} was delivered to the wrong house.",
         "I am sorry about that. I have asked {carrier} to collect it and sent you a new {product} today."),
    ],
    "account": [
        ("I cannot log in to my account.",
         "Please reset your password from the sign in page. If the reset email does not arrive, check your spam "
         "folder or ask me to send it again."),
        ("How do I delete my account?",
         "Open Account settings, choose Privacy and select Delete account. Your data is removed within thirty "
         "days."),
        ("How do I turn on two factor login?",
         "Open Account settings, choose Security and turn on two factor login. You will scan a code with an "
         "authenticator app."),
        ("I want to change the email on my account.",
         "Open Account settings and edit the email address. We send a confirmation link to the new address."),
    ],
    "technical": [
        ("My {product} will not turn on.",
         "Please charge your {product} for thirty minutes, then hold the power button for ten seconds. If it "
         "still does not start, I can arrange a repair."),
        ("The {product} keeps disconnecting from wifi.",
         "Please restart your router and your {product}, then forget the network and join it again. Updating "
         "the {product} software also helps."),
        ("How do I update the software on my {product}?",
         "Open Settings on your {product}, choose System and select Software update. Keep it charging while it "
         "installs."),
        ("The battery of my {product} drains fast.",
         "Lower the screen brightness and close apps you do not use. If the {product} is under warranty, we can "
         "replace the battery."),
    ],
}


def dialogue(rng: random.Random, topic: str) -> str:
    question, answer = rng.choice(TOPICS[topic])
    slots = {"product": rng.choice(PRODUCTS), "plan": rng.choice(PLANS), "carrier": rng.choice(CARRIERS),
             "days": rng.choice(DAYS)}
    return f"Customer: {question.format(**slots)}\nAgent: {answer.format(**slots)}{EOS}\n"


def questions(topic: str, n: int, seed: int = 0) -> list[str]:
    """``n`` customer questions about ``topic`` (what the demo and the tests send)."""
    rng = random.Random(f"{topic}-{seed}")  # noqa: S311 (a reproducible corpus, not a secret)
    out = []
    for _ in range(n):
        question, _answer = rng.choice(TOPICS[topic])
        out.append(question.format(product=rng.choice(PRODUCTS), plan=rng.choice(PLANS)))
    return out


def generate(n: int = 1500, seed: int = 0) -> str:
    rng = random.Random(seed)  # noqa: S311 (a reproducible corpus, not a secret)
    topics = sorted(TOPICS)
    return "".join(dialogue(rng, rng.choice(topics)) for _ in range(n))


if __name__ == "__main__":
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(generate())
    print(f"wrote {DATA} ({DATA.stat().st_size} bytes)")
