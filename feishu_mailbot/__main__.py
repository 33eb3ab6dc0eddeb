import sys

from feishu_mailbot.cli.main import main

sys.exit(main())
