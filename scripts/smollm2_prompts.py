"""What the SmolLM2 targets ask (read by make_smollm2_targets.py): instructions and
questions written for them, passages taken from the docstrings that ship with Python,
and record templates for the JSON target. The benchmark's pools and the held-out ones
(CHECKER, KNOWN_ANSWERS, the second list of RECORDS) share no instruction, passage or
message template.
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Callable

# --- chat: the benchmark's pools -----------------------------------------------------

SHORT = [
    "What is the capital of Italy?", "How many continents are there?", "Who wrote Pride and Prejudice?",
    "What is the freezing point of water in Fahrenheit?", "What gas do plants take in from the air?",
    "Name the longest river in Africa.", "What is the square root of 81?", "How many minutes are in two hours?",
    "What language is spoken in Brazil?", "What does CPU stand for?", "Who painted the Mona Lisa?",
    "What is the tallest mountain in the world?", "How many sides does a hexagon have?", "What is the capital of Canada?",
    "Which animal is known as the king of the jungle?", "What is 15 plus 27?", "In which country are the pyramids of Giza?",
    "What is the main ingredient of guacamole?", "How many hours are in a day?", "What is the opposite of 'ancient'?",
]
EXPLAIN = [
    "Explain the difference between a list and a tuple in Python.", "Why is the sea salty?",
    "Give me four tips for writing a clear email.", "Describe how a refrigerator keeps food cold.",
    "What are the benefits of regular exercise?", "Explain what an API is to a beginner.", "How do vaccines work?",
    "Suggest a plan for learning to play the guitar in three months.", "Write the opening of a short story about a lighthouse keeper.",
    "What should I pack for a weekend hiking trip?", "Explain recursion with a simple example.",
    "Compare travelling by train and by plane for a 500 km trip.", "Why do we have seasons on Earth?",
    "How can I save money on groceries?", "Write a polite message declining a meeting invitation.",
    "What is the difference between weather and climate?", "Explain how a bicycle stays upright.",
    "Give me a simple recipe for pancakes.", "What makes a good password?", "Describe the water cycle in a few sentences.",
]
CODE = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Write a SQL query that counts the orders of each customer in a table called orders.",
    "Write a Python function that removes duplicates from a list while keeping the order.",
    "Write a Python class for a simple stack with push, pop and peek.",
    "Write a JavaScript function that reverses a string.",
    "Write a Python function that counts the words in a text file.",
    "Write a Python function that converts Celsius to Fahrenheit.",
    "Write a Python script that prints the numbers from 1 to 20, but 'Fizz' for multiples of 3 and 'Buzz' for multiples of 5.",
    "Write a Python function that merges two sorted lists into one sorted list.",
]
SUMMARY_MODULES = ["collections", "heapq", "difflib", "json", "statistics", "tempfile", "sched", "uuid", "copy", "subprocess", "cmd", "inspect"]
SUMMARY_ASKS = [
    "Summarise the following documentation in two sentences.", "Explain to a beginner what the module described below is for.",
    "List the main features described in this text.",
]
CONVERSATIONS = [
    [{"role": "user", "content": "I'm planning a trip to Japan in April."},
     {"role": "assistant", "content": "That's a lovely time to go: the cherry blossoms are usually out. How can I help you plan it?"},
     {"role": "user", "content": "Which cities should I visit in one week?"}],
    [{"role": "user", "content": "I want to start running."},
     {"role": "assistant", "content": "Great idea! Do you run at all at the moment, or are you starting from scratch?"},
     {"role": "user", "content": "From scratch. How often should I run in the first month?"}],
    [{"role": "user", "content": "Can you help me name my new bakery?"},
     {"role": "assistant", "content": "Of course. What kind of bakery is it, and where is it?"},
     {"role": "user", "content": "A small bakery for sourdough bread in a seaside town. Give me five names."}],
    [{"role": "user", "content": "My tomato plants have yellow leaves."},
     {"role": "assistant", "content": "Yellow leaves can come from overwatering, too little nitrogen or disease. Are they in pots or in the ground?"},
     {"role": "user", "content": "In pots on a balcony. What should I do?"}],
    [{"role": "user", "content": "I have an interview for a junior developer job next week."},
     {"role": "assistant", "content": "Congratulations! What would you like to prepare first?"},
     {"role": "user", "content": "What questions are they likely to ask me?"}],
    [{"role": "user", "content": "What is a good book for learning to cook?"},
     {"role": "assistant", "content": "It depends on what you like to eat. Do you prefer quick weekday meals or baking?"},
     {"role": "user", "content": "Quick weekday meals, mostly vegetarian."}],
    [{"role": "user", "content": "I keep forgetting to drink water during the day."},
     {"role": "assistant", "content": "That's very common. Do you work at a desk?"},
     {"role": "user", "content": "Yes, all day. Any simple tricks?"}],
    [{"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."},
     {"role": "user", "content": "Now write one about the mountains."}],
    [{"role": "user", "content": "How do I make my Python code faster?"},
     {"role": "assistant", "content": "First measure where the time goes, for example with cProfile. What does your code do?"},
     {"role": "user", "content": "It reads a large CSV file and sums some columns."}],
    [{"role": "user", "content": "I'm bored this weekend."},
     {"role": "assistant", "content": "Let's fix that! Do you want to stay in or go out?"},
     {"role": "user", "content": "Go out, but I don't want to spend much money."}],
]


def passage(module: str, limit: int = 1200) -> str:
    """A module's docstring (text that ships with Python), cut at a paragraph before `limit` characters."""
    doc = (importlib.import_module(module).__doc__ or "").strip()
    if len(doc) <= limit:
        return doc
    cut = doc.rfind("\n\n", 0, limit)
    return doc[: cut if cut > limit // 3 else limit].strip()


# --- chat: held out --------------------------------------------------------------------

CHECKER = [
    [{"role": "user", "content": "What is the capital of Spain?"}],
    [{"role": "user", "content": "How many legs does an insect have?"}],
    [{"role": "user", "content": "Explain what a compiler does in two sentences."}],
    [{"role": "user", "content": "Give me three ideas for a rainy afternoon with children."}],
    [{"role": "user", "content": "Write a Python function that returns the largest number in a list."}],
    [{"role": "user", "content": "Why do cats purr?"}],
    [{"role": "user", "content": f"Summarise the following documentation in one sentence.\n\n{passage('csv', 700)}"}],
    [{"role": "user", "content": "Translate 'thank you very much' into French."}],
    [{"role": "user", "content": "What is 9 times 8?"}],
    [{"role": "user", "content": "Write a short thank-you note to a neighbour who watered my plants."}],
    [{"role": "user", "content": f"Explain to a beginner what this module is for.\n\n{passage('timeit', 700)}"}],
    [{"role": "user", "content": "What is the difference between a virus and a bacterium?"}],
    [{"role": "user", "content": "I'd like to learn Spanish."},
     {"role": "assistant", "content": "¡Qué bien! Are you a complete beginner?"},
     {"role": "user", "content": "Yes. How should I start?"}],
    [{"role": "user", "content": "Name three renewable sources of energy."}],
    [{"role": "user", "content": "Write a limerick about a cat who loves cheese."}],
    [{"role": "user", "content": "How does a search engine find web pages?"}],
]

# Short factual questions and the answers accepted (whole words, any case): the chat
# target's known-answers check (targets/smollm2-chat-cpu/known_answers.py).
KNOWN_ANSWERS = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("How many days are in a week?", ["7", "seven"]),
    ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("What colour is the sky on a clear day?", ["blue"]),
    ("At what temperature in degrees Celsius does water boil at sea level?", ["100"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("What is the chemical formula of water?", ["H2O", "H₂O"]),
    ("Who was the first president of the United States?", ["Washington"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("How many months are in a year?", ["12", "twelve"]),
    ("What is the capital of the United Kingdom?", ["London"]),
    ("Which animal is the largest mammal?", ["blue whale"]),
]

# --- JSON: records to extract ----------------------------------------------------------

NAMES = ["Maria Lopez", "Tom Becker", "Aisha Khan", "Lukas Novak", "Emma Dubois", "Kenji Sato", "Olivia Brown", "Rahul Mehta",
         "Sofia Rossi", "Jonas Berg", "Chloe Martin", "Diego Alvarez", "Hannah Schmidt", "Yusuf Demir", "Grace Kim", "Peter Walsh"]
CITIES = ["Lisbon", "Berlin", "Toronto", "Osaka", "Lyon", "Melbourne", "Austin", "Krakow", "Seville", "Dublin", "Oslo", "Nairobi"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NAME = {"type": "string", "pattern": "^[A-Za-z .'-]{1,40}$"}
CITY = {"type": "string", "pattern": "^[A-Za-z .'-]{1,30}$"}


@dataclass(frozen=True)
class Field:
    name: str
    schema: dict
    describe: str


@dataclass(frozen=True)
class Record:
    """A kind of record: its fields, how to draw values for them, and messages that state them."""

    name: str
    fields: tuple[Field, ...]
    draw: Callable[[random.Random], dict]
    templates: tuple[str, ...]

    def text(self, rng: random.Random, values: dict) -> str:
        return rng.choice(self.templates).format(**values)


def _time(rng: random.Random) -> str:
    return f"{rng.randint(8, 21)}:{rng.choice(['00', '15', '30', '45'])}"


BOOKING = Record(
    "table booking",
    (Field("name", NAME, "the guest's name"), Field("guests", {"type": "integer", "minimum": 1, "maximum": 20}, "how many people"),
     Field("day", {"type": "string", "enum": DAYS}, "the day of the week"),
     Field("time", {"type": "string", "pattern": "^[0-9:]{4,5}$"}, "the time as HH:MM")),
    lambda r: {"name": r.choice(NAMES), "guests": r.randint(1, 12), "day": r.choice(DAYS), "time": _time(r)},
    ("Hi, this is {name}. Could I book a table for {guests} on {day} at {time}? Thanks!",
     "Good evening, I'd like to reserve a table for {guests} people this {day}, around {time}. The name is {name}.",
     "{name} here - we are {guests} and would love to come for dinner on {day} at {time}. Is that possible?"),
)
TICKET = Record(
    "support ticket",
    (Field("customer", NAME, "the customer's name"),
     Field("product", {"type": "string", "enum": ["laptop", "phone", "printer", "router", "tablet"]}, "which product"),
     Field("severity", {"type": "string", "enum": ["low", "medium", "high"]}, "low, medium or high"),
     Field("refund_requested", {"type": "boolean"}, "true or false")),
    lambda r: {"name": r.choice(NAMES), "product": r.choice(["laptop", "phone", "printer", "router", "tablet"]),
               "problem": r.choice(["does not turn on any more", "keeps restarting", "is very slow", "has a cracked screen"]),
               "want": r.choice(["I would like my money back.", "Please repair it.", "Can you send a replacement?"])},
    ("My {product} {problem}. I bought it two weeks ago. {want} - {name}",
     "Hello, {name} writing. The {product} I ordered {problem} and I need it for work tomorrow. {want}"),
)
CONTACT = Record(
    "contact",
    (Field("name", NAME, "the full name"), Field("city", CITY, "the city"),
     Field("email", {"type": "string", "pattern": "^[a-z0-9.@_-]{3,40}$"}, "the e-mail address"),
     Field("age", {"type": "integer", "minimum": 0, "maximum": 120}, "the age in years")),
    lambda r: (lambda n: {"name": n, "city": r.choice(CITIES), "age": r.randint(19, 75),
                          "email": n.lower().replace(" ", ".") + r.choice(["@example.com", "@mail.org"])})(r.choice(NAMES)),
    ("Nice to meet you! I'm {name}, {age} years old, living in {city}. Write to me at {email}.",
     "New member: {name} ({age}) from {city}, e-mail {email}."),
)
ORDER = Record(
    "order",
    (Field("item", {"type": "string", "pattern": "^[A-Za-z -]{1,30}$"}, "what was ordered"),
     Field("quantity", {"type": "integer", "minimum": 1, "maximum": 100}, "how many"),
     Field("express", {"type": "boolean"}, "whether express delivery was asked for"),
     Field("city", CITY, "the delivery city")),
    lambda r: {"item": r.choice(["coffee mugs", "notebooks", "desk lamps", "running shoes", "tea towels"]), "quantity": r.randint(1, 30),
               "city": r.choice(CITIES), "speed": r.choice(["as fast as possible, express please", "no rush, standard shipping is fine"])},
    ("Please send {quantity} {item} to our office in {city}, {speed}.",
     "Order for {city}: {quantity} x {item}. Delivery: {speed}."),
)
WEATHER = Record(
    "weather report",
    (Field("city", CITY, "the city"), Field("temperature_c", {"type": "integer", "minimum": -50, "maximum": 60}, "degrees Celsius"),
     Field("condition", {"type": "string", "enum": ["sunny", "cloudy", "rain", "snow", "fog"]}, "sunny, cloudy, rain, snow or fog")),
    lambda r: {"city": r.choice(CITIES), "t": r.randint(-10, 35), "sky": r.choice(["sunny", "cloudy", "rain", "snow", "fog"])},
    ("Today in {city}: {sky}, with a high of {t} degrees.", "{city} weather update - it's {t}°C and the forecast says {sky}."),
)
BOOK = Record(
    "book",
    (Field("title", {"type": "string", "pattern": "^[A-Za-z ,.'-]{1,50}$"}, "the title"), Field("author", NAME, "the author"),
     Field("year", {"type": "integer", "minimum": 1500, "maximum": 2030}, "the year it was published")),
    lambda r: {"title": r.choice(["The Silent Harbour", "Winter Light", "A Map of Small Things", "The Last Orchard"]),
               "name": r.choice(NAMES), "year": r.randint(1950, 2024)},
    ("I just finished {title} by {name}, published in {year}. Loved it!", "Book club pick: '{title}' ({name}, {year})."),
)
# Held out: the checker's records; never in the benchmark.
EVENT = Record(
    "event",
    (Field("title", {"type": "string", "pattern": "^[A-Za-z ]{1,40}$"}, "the event's title"), Field("city", CITY, "where"),
     Field("date", {"type": "string", "pattern": "^[0-9-]{8,10}$"}, "the date as YYYY-MM-DD"),
     Field("attendees", {"type": "integer", "minimum": 1, "maximum": 10000}, "how many are expected")),
    lambda r: {"title": r.choice(["Spring Jazz Night", "Python Meetup", "Charity Run"]), "city": r.choice(CITIES),
               "date": f"2027-0{r.randint(1, 9)}-{r.randint(10, 28)}", "n": r.randint(20, 800)},
    ("Join us for {title} in {city} on {date}! We expect about {n} people.",),
)
JOB = Record(
    "job posting",
    (Field("role", {"type": "string", "pattern": "^[A-Za-z ]{1,40}$"}, "the job title"), Field("city", CITY, "the city"),
     Field("remote", {"type": "boolean"}, "whether remote work is allowed"),
     Field("salary", {"type": "integer", "minimum": 0, "maximum": 500000}, "the yearly salary")),
    lambda r: {"role": r.choice(["Data Analyst", "Backend Engineer", "Nurse", "Teacher"]), "city": r.choice(CITIES),
               "salary": r.randint(30, 120) * 1000, "remote": r.choice(["Fully remote is fine.", "This role is on site only."])},
    ("We are hiring a {role} in {city}, paying {salary} a year. {remote}",),
)
RECORDS = ([BOOKING, TICKET, CONTACT, ORDER, WEATHER, BOOK], [EVENT, JOB])
