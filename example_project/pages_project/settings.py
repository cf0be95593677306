"""Settings of the example project. Any of them can be overridden with ``-s NAME=VALUE``."""

BOT_NAME = "pages_project"
SPIDER_MODULES = ["pages_project.spiders"]
NEWSPIDER_MODULE = "pages_project.spiders"

# The add-on installs the aiohttp downloader middleware and the failure ledger.
ADDONS = {"scrapy_asyncfetch.Addon": 300}
ITEM_PIPELINES = {"scrapy_asyncfetch.PageWriterPipeline": 300}

# Scrapy's default reactor, stated because everything here relies on it: aiohttp and the demo
# site run on the asyncio loop that this reactor drives.
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"

# Relative to the directory the crawl runs in (here: example_project/output/pages). Under
# scrapyd, pass an absolute path: jobs run in scrapyd's own directory.
ASYNCFETCH_PAGES_DIR = "output/pages"

# Polite, like Scrapy's own project template: the demo site's robots.txt disallows one link per
# host, which the failure ledger then records as IgnoreRequest.
ROBOTSTXT_OBEY = True

# The caps the demo shows: 16 requests in flight in all, at most 4 per host (Scrapy's defaults
# are 16 and 8). The demo site logs the most it saw at once per host when it stops.
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 4

# INFO keeps the run readable (one line per page would bury the summary); the progress line
# every two seconds shows the rate the caps allow.
LOG_LEVEL = "INFO"
LOGSTATS_INTERVAL = 2.0

# Neither the telnet console nor Scrapy 2.19's remote-control server: nothing here needs a way
# into a running crawl, scrapyd may run several jobs at once, and the remote control writes a
# job file under the user's home directory at every run.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False

FEED_EXPORT_ENCODING = "utf-8"
