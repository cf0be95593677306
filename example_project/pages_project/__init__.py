"""Example Scrapy project for scrapy-asyncfetch: the ``pages`` spider and its demo site."""
