"""Packaging of the example project as an egg, for scrapyd (scrapyd-client 2.x builds from this).

Only the project is packed: scrapy-asyncfetch itself must be installed next to scrapyd.
"""

from setuptools import find_packages, setup

setup(
    name="pages_project",
    version="1.0",
    packages=find_packages(include=["pages_project", "pages_project.*"]),
    # scrapyd's runner reads this entry point to find the project's settings module.
    entry_points={"scrapy": ["settings = pages_project.settings"]},
)
